"""The catalog's unit of work: append events and project them, one transaction.

``duckmesh.events`` only stores events (optimistic concurrency, metadata,
notification); the catalog tables derived from them are
``duckmesh.projections``'. ``append`` here does both inside the caller's
transaction, so the catalog never runs ahead of or behind its log. Every
catalog write goes through it (commands, snapshot publication, maintenance).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from duckmesh import events
from duckmesh.events import Event, RecordedEvent
from duckmesh.projections import apply

Conn = psycopg.Connection[Any]


def append(
    conn: Conn,
    stream: str,
    expected_version: int,
    new_events: Sequence[Event],
    *,
    tenant_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> list[RecordedEvent]:
    """Append ``new_events`` after ``expected_version`` and apply each to the
    projections. Raises ``ConcurrencyConflict`` when the stream has moved on;
    must run inside a transaction (a conflict or a failing projector leaves
    nothing written)."""
    recorded = events.append(
        conn, stream, expected_version, new_events, tenant_id=tenant_id, metadata=metadata
    )
    for rec in recorded:
        apply(conn, rec)
    return recorded


def append_current(
    conn: Conn, stream: str, event: Event, *, tenant_id: str, metadata: dict[str, Any]
) -> list[RecordedEvent]:
    """Append one event at the stream's current version (streams where the
    order matters but no decision depends on what was read)."""
    version = events.stream_version(conn, stream)
    return append(conn, stream, version, [event], tenant_id=tenant_id, metadata=metadata)
