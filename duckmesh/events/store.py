"""The append-only event log: append with an expected version, read back.

Optimistic concurrency lives in ``event_stream``: appending checks and bumps
the stream's version in one UPDATE, so two writers that read the same version
cannot both append, and versions have no gaps (except the one a restore
makes on purpose: ``skip_versions``). The store knows nothing of
the tables derived from the log: ``duckmesh.catalog.journal.append`` appends
here and applies the projections in the same transaction. Call inside a
transaction.

Who asked for a change: inside ``acting_as(actor_key_id=..., trace_id=...)``
(the API wraps each change a request makes) every appended event's metadata
carries those fields, whichever command or actor appends it, so the audit
trail names the key and the request of schema snapshots, maintenance runs and
anything a request causes. Explicit ``metadata`` wins on equal keys.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import psycopg

from duckmesh.errors import DuckMeshError
from duckmesh.events.types import Event, decode

if TYPE_CHECKING:
    from duckmesh.db import Database

T = TypeVar("T")
EVENTS_CHANNEL = "duckmesh_events"
_ACTING: ContextVar[Mapping[str, Any]] = ContextVar("duckmesh_acting", default={})  # noqa: B039 (never mutated)


@contextmanager
def acting_as(**metadata: Any) -> Iterator[None]:
    """Add ``metadata`` to every event appended in this context (and in
    threads started from it: Trio copies the context into worker threads)."""
    token = _ACTING.set({**_ACTING.get(), **metadata})
    try:
        yield
    finally:
        _ACTING.reset(token)


class ConcurrencyConflict(DuckMeshError):
    """Another writer appended to the stream first; re-read and retry."""

    def __init__(self, stream: str, expected: int) -> None:
        super().__init__(
            "CONCURRENCY_CONFLICT",
            f"stream {stream!r} is no longer at version {expected}",
            stream=stream,
            expected_version=expected,
        )
        self.stream = stream
        self.expected = expected


@attrs.frozen
class RecordedEvent:
    position: int
    stream: str
    version: int
    recorded_at: datetime
    event: Event
    metadata: dict[str, Any]


def call_retrying(db: Database, fn: Callable[[psycopg.Connection[Any]], T], attempts: int = 8) -> T:
    """Run ``fn`` in one transaction, again from the start when it lost an
    append race (``ConcurrencyConflict``), with a short growing pause."""
    for attempt in range(attempts):
        try:
            return db.call(fn)
        except ConcurrencyConflict:
            if attempt == attempts - 1:
                raise
            time.sleep(0.005 * (attempt + 1))
    raise AssertionError("unreachable")


def stream_version(conn: psycopg.Connection[Any], stream: str) -> int:
    row = conn.execute("SELECT version FROM event_stream WHERE stream = %s", (stream,)).fetchone()
    return int(row[0]) if row else 0


def skip_versions(
    conn: psycopg.Connection[Any], stream: str, expected_version: int, by: int
) -> int:
    """Advance an existing stream's version by ``by`` without events: the one
    gap a stream can have, made only by a restore so that numbers a lost
    range may have used are never issued again (ADR 0016). Returns the new
    version; ``ConcurrencyConflict`` when the stream moved on."""
    if expected_version == 0:
        cur = conn.execute(
            "INSERT INTO event_stream (stream, version) VALUES (%s, %s)"
            " ON CONFLICT (stream) DO NOTHING",
            (stream, by),
        )
    else:
        cur = conn.execute(
            "UPDATE event_stream SET version = version + %s WHERE stream = %s AND version = %s",
            (by, stream, expected_version),
        )
    if cur.rowcount != 1:
        raise ConcurrencyConflict(stream, expected_version)
    return expected_version + by


def append(
    conn: psycopg.Connection[Any],
    stream: str,
    expected_version: int,
    events: Sequence[Event],
    *,
    tenant_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> list[RecordedEvent]:
    """Append ``events`` after ``expected_version`` (projections are the
    caller's: see ``duckmesh.catalog.journal``).

    Raises :class:`ConcurrencyConflict` when the stream has moved on. Must run
    inside a transaction (the caller's): a conflict leaves nothing written.
    """
    if not events:
        # Nothing to write, but the expectation still holds or fails. (Writing
        # a new stream at version 0 would make it look absent yet refuse
        # every later append at 0.)
        if stream_version(conn, stream) != expected_version:
            raise ConcurrencyConflict(stream, expected_version)
        return []
    new_version = expected_version + len(events)
    # One statement checks and bumps the stream's version and inserts the
    # events (none when the version moved on), so an append is one round
    # trip and needs no row count: publishers may run it in a pipeline.
    bump = (
        "INSERT INTO event_stream (stream, version) VALUES (%(stream)s, %(new)s)"
        " ON CONFLICT (stream) DO NOTHING RETURNING stream"
        if expected_version == 0
        else "UPDATE event_stream SET version = %(new)s"
        " WHERE stream = %(stream)s AND version = %(expected)s RETURNING stream"
    )
    metadata = {**_ACTING.get(), **(metadata or {})}
    meta = json.dumps(metadata)
    rows = conn.execute(
        f"WITH bumped AS ({bump}) INSERT INTO event_log"
        " (stream, version, event_type, schema_version, tenant_id, payload, metadata)"
        " SELECT b.stream, %(expected)s + e.n, e.event_type, e.schema_version, %(tenant)s,"
        " e.payload, %(meta)s FROM bumped b,"
        " unnest(%(types)s::text[], %(versions)s::int[], %(payloads)s::jsonb[])"
        " WITH ORDINALITY AS e(event_type, schema_version, payload, n)"
        " ORDER BY e.n RETURNING version, position, recorded_at",
        {
            "stream": stream,
            "new": new_version,
            "expected": expected_version,
            "tenant": tenant_id,
            "meta": meta,
            "types": [e.event_type for e in events],
            "versions": [e.schema_version for e in events],
            "payloads": [json.dumps(e.to_payload()) for e in events],
        },
    ).fetchall()
    if not rows:
        raise ConcurrencyConflict(stream, expected_version)
    rows.sort()
    recorded = [
        RecordedEvent(
            position=position,
            stream=stream,
            version=version,
            recorded_at=recorded_at,
            event=event,
            metadata=metadata,
        )
        for event, (version, position, recorded_at) in zip(events, rows, strict=True)
    ]
    conn.execute("SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, stream))
    return recorded


def _decode_row(row: tuple[Any, ...]) -> RecordedEvent:
    position, stream, version, event_type, schema_version, payload, metadata, recorded_at = row
    return RecordedEvent(
        position=position,
        stream=stream,
        version=version,
        recorded_at=recorded_at,
        event=decode(event_type, schema_version, payload),
        metadata=metadata,
    )


_COLUMNS = "position, stream, version, event_type, schema_version, payload, metadata, recorded_at"


def read_stream(conn: psycopg.Connection[Any], stream: str) -> list[RecordedEvent]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM event_log WHERE stream = %s ORDER BY version", (stream,)
    ).fetchall()
    return [_decode_row(r) for r in rows]


def read_all(
    conn: psycopg.Connection[Any], after_position: int = 0, batch: int = 1000
) -> Iterator[RecordedEvent]:
    """Every event after ``after_position`` in log order, fetched in batches."""
    position = after_position
    while True:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM event_log WHERE position > %s ORDER BY position LIMIT %s",
            (position, batch),
        ).fetchall()
        if not rows:
            return
        for row in rows:
            yield _decode_row(row)
        position = rows[-1][0]


def count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM event_log").fetchone()
    return int(row[0]) if row else 0


def subscribe(
    dsn: str, after_position: int = 0, *, poll_s: float = 1.0, stop: Any = None
) -> Iterator[RecordedEvent]:
    """Every event after ``after_position``, then each new one as it lands.

    Catch-up reads the log in batches; afterwards LISTEN on ``EVENTS_CHANNEL``
    wakes the reader, with a re-read every ``poll_s`` as the fallback, so a
    lost notification delays an event but never skips it. Runs until
    ``stop()`` returns true (checked between waits). Blocking: call it from
    a worker thread.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"LISTEN {EVENTS_CHANNEL}")
        position = after_position
        while stop is None or not stop():
            for rec in read_all(conn, position):
                position = rec.position
                yield rec
            for _ in conn.notifies(timeout=poll_s, stop_after=1):
                pass
