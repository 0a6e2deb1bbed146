"""The event log: every catalog change is an append-only event in Postgres.

Owns ``event_log`` and ``event_stream``. Imports nothing of the catalog or
its projections: ``duckmesh.catalog.journal`` appends and projects.
"""

from duckmesh.events.store import (
    EVENTS_CHANNEL,
    ConcurrencyConflict,
    RecordedEvent,
    acting_as,
    append,
    call_retrying,
    count,
    read_all,
    read_stream,
    stream_version,
    subscribe,
)
from duckmesh.events.types import EVENT_TYPES, Event, decode

__all__ = [
    "EVENTS_CHANNEL",
    "EVENT_TYPES",
    "ConcurrencyConflict",
    "Event",
    "RecordedEvent",
    "acting_as",
    "append",
    "call_retrying",
    "count",
    "decode",
    "read_all",
    "read_stream",
    "stream_version",
    "subscribe",
]
