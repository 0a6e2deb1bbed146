"""The ``IngestBus`` contract, free of any backend's types.

Semantics (SPEC §2.3), identical for every backend:

- ``publish`` appends records durably. Each request in the call is
  all-or-nothing; the call may group many requests of one tenant into one
  backend transaction (group commit). Every new record gets the next token of
  its tenant: tokens are contiguous and assigned in commit order. A retry of
  an idempotency key with the same payload hash gets the original token back
  and consumes none; the same key with another payload fails its request with
  ``IDEMPOTENCY_CONFLICT``.
- ``claim`` hands one consumer the next records of one scope (a tenant) under
  a lease with a fencing number; only that consumer may ``ack`` them, and only
  while its fence is current. ``nack`` gives the scope back unchanged; with
  ``retry_after_s`` no consumer claims it again before then (a failing tenant
  backs off while the others go on).
- ``ack`` advances the scope's committed position. ``tx`` is the catalog
  transaction that publishes the snapshot: a backend living in the catalog
  database (Postgres) joins it so publication and ack are one commit; a
  backend that cannot (Kafka) acks after the catalog commit, and the catalog
  watermark stays the source of truth (ADR 0006).
- ``quarantine`` sets records of a claimed batch aside with a reason (they
  fail on their own); ``tx`` as for ``ack``, so the records are set aside
  exactly when the snapshot that skips them is published. Setting a token
  aside twice keeps the first reason. ``quarantined`` counts a tenant's
  set-aside records and lists the latest.
- ``publish_upload`` appends one upload (ADR 0013): its N new rows get N
  contiguous tokens of the same per-tenant sequence and are claimed, in token
  order, with the records (``Batch.uploads``). ``upload_receipt`` answers
  a retry of a whole-request key before the upload is parsed (409 when the
  key was used with other content); ``publish_upload`` checks again.
- ``prune`` deletes a tenant's committed rows (tokens at or below the
  committed position) ingested longer than ``window_s`` ago, quarantined
  ones excepted; a retry of a pruned idempotency key is a new record, so
  idempotency holds within the window (ADR 0016). ``retained`` counts what
  the bus holds for a tenant.
- ``advance_tokens`` (after restoring a backup) moves the tenant's counter
  and committed position on by ``gap``, renumbering records still pending by
  ``gap``, so no token a lost range may have issued is issued again; ``tx``
  as for ``ack``.
- ``lag`` gives every tenant's (latest, committed) token; ``ingested_at``
  when given records were made durable (for the visibility-lag metric).

Methods are synchronous: callers run them in worker threads.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, Protocol, overload

import attrs
import pyarrow as pa

from duckmesh.errors import DuckMeshError


@attrs.frozen
class IngestRecord:
    table_id: str
    idempotency_key: str
    op: str  # insert | upsert | delete
    payload: str  # canonical JSON text
    payload_hash: bytes
    event_time: dt.datetime | None
    schema_version: int
    # The payload's row in Arrow (its table's columns) when validation built
    # it already (ingest.column_arrow): the bus stores it as is. Not part of
    # the record's identity.
    arrow: pa.Table | None = attrs.field(default=None, eq=False, repr=False)
    arrow_row: int = attrs.field(default=0, eq=False, repr=False)


class RecordSequence(Sequence[IngestRecord]):
    """Records held some other way than one object each, read as a sequence:
    a subclass gives ``__len__`` and ``_at`` (an index already in range)."""

    __slots__ = ()

    def _at(self, i: int) -> IngestRecord:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> IngestRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[IngestRecord]: ...

    def __getitem__(self, index: int | slice) -> IngestRecord | list[IngestRecord]:
        if isinstance(index, slice):
            return [self._at(i) for i in range(*index.indices(len(self)))]
        return self._at(range(len(self))[index])  # IndexError, negative indexes


class RecordColumns(RecordSequence):
    """A request's validated records held as columns (``ingest.record_columns``):
    one table and schema version, every key used once. Read as a sequence it
    gives the very ``IngestRecord``s the record-by-record check would (built
    on demand); the bus reads the columns instead (``record_batches``), so a
    request accepted whole costs no object per record."""

    __slots__ = ("arrow", "hashes", "keys", "ops", "schema_version", "table_id", "texts", "times")

    def __init__(
        self,
        table_id: str,
        schema_version: int,
        keys: list[str],
        ops: list[str],
        texts: list[str],
        hashes: list[bytes],
        times: list[dt.datetime | None],
        arrow: pa.Table | None,
    ) -> None:
        self.table_id = table_id
        self.schema_version = schema_version
        self.keys = keys
        self.ops = ops
        self.texts = texts
        self.hashes = hashes
        self.times = times
        self.arrow = arrow  # the payloads' rows, or None: the bus parses the texts

    def __len__(self) -> int:
        return len(self.keys)

    def _at(self, i: int) -> IngestRecord:
        return IngestRecord(
            self.table_id,
            self.keys[i],
            self.ops[i],
            self.texts[i],
            self.hashes[i],
            self.times[i],
            self.schema_version,
            self.arrow,
            i,
        )

    def __iter__(self) -> Iterator[IngestRecord]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, RecordColumns)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RecordColumns({self.table_id!r}, {len(self)} records)"


@attrs.frozen
class Receipt:
    token: int
    duplicate: bool


class NewReceipts(Sequence[Receipt]):
    """The receipts of ``n`` new records with tokens ``first`` .. ``first + n - 1``
    (a request whose every record is new): built on demand, compared as a list."""

    __slots__ = ("first", "n")

    def __init__(self, first: int, n: int) -> None:
        self.first = first
        self.n = n

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, index: int) -> Receipt: ...

    @overload
    def __getitem__(self, index: slice) -> list[Receipt]: ...

    def __getitem__(self, index: int | slice) -> Receipt | list[Receipt]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.n))]
        return Receipt(self.first + range(self.n)[index], False)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, NewReceipts)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"NewReceipts({self.first}, {self.n})"


Receipts = Sequence[Receipt]


def receipts_summary(receipts: Receipts) -> tuple[int, int]:
    """(duplicates, highest token) of a request's receipts."""
    if isinstance(receipts, NewReceipts):
        return 0, receipts.first + receipts.n - 1
    return sum(1 for r in receipts if r.duplicate), max(r.token for r in receipts)


class BusRecord(NamedTuple):
    """One durable record (a named tuple: batches hold up to 100k of them)."""

    token: int
    table_id: str
    op: str
    payload: str
    event_time: dt.datetime | None
    ingested_at: dt.datetime
    schema_version: int
    # Why the bus could not hand the record over intact (it is quarantined), or None.
    defect: str | None = None


@attrs.frozen
class UploadBatch:
    """Rows of one upload with contiguous tokens, as the bus stores them
    (``data`` is an Arrow IPC stream, rows in token order; ADR 0013)."""

    first_token: int
    last_token: int
    table_id: str
    op: str
    event_time_column: str | None
    ingested_at: dt.datetime
    schema_version: int
    data: bytes
    trace_ids: tuple[str, ...] = ()  # of the requests that wrote the rows (bounded)

    @property
    def rows(self) -> int:
        return self.last_token - self.first_token + 1


@attrs.frozen
class Batch:
    scope: str
    consumer_id: str
    fence: int
    after_token: int  # the scope's committed position when claimed
    records: tuple[BusRecord, ...]
    # Upload batches claimed with the records; together they cover the tokens
    # after_token+1 .. last_token without a gap.
    uploads: tuple[UploadBatch, ...] = ()

    @property
    def last_token(self) -> int:
        top = self.records[-1].token if self.records else self.after_token
        return max(top, self.uploads[-1].last_token) if self.uploads else top

    @property
    def size(self) -> int:
        """Records and upload rows in the batch."""
        return len(self.records) + sum(u.rows for u in self.uploads)


@attrs.frozen
class UploadRequest:
    """A validated upload for ``publish_upload``: all rows or none are written.

    Exactly one of ``idempotency_key`` (the whole request) and ``row_keys``
    (one key per row, with ``row_hashes``) is set. ``data`` holds the rows
    cast to the table's schema version ``schema_version``.
    """

    table_id: str
    op: str
    event_time_column: str | None
    schema_version: int
    data: pa.Table
    content_hash: bytes
    idempotency_key: str | None
    row_keys: Sequence[str] | None
    row_hashes: Sequence[str] | None  # hex digests
    trace_id: str | None = None  # the uploading request's, kept on its bus batches


@attrs.frozen
class UploadReceipt:
    accepted: int
    duplicates: int
    max_token: int  # highest token of the request's rows, new or duplicate (0: none)
    first_token: int | None  # the new rows' tokens, or None when all were duplicates
    last_token: int | None


@attrs.frozen
class QuarantineEntry:
    """A record set aside: it cannot be committed on its own (SPEC §2.3)."""

    token: int
    table_id: str
    reason: str


@attrs.frozen
class BusPrune:
    deleted: int  # records and upload rows deleted by this run
    pruned_token: int  # every committed row at or below it is gone (quarantined ones kept)


@attrs.frozen
class BusRetained:
    records: int  # records and upload rows held
    bytes: int  # bus storage attributed to them (by share of records; indexes included)


@attrs.frozen
class TokenJump:
    """A tenant's bus positions before ``advance_tokens``."""

    committed_token: int
    issued_token: int


class LeaseLost(DuckMeshError):
    """The consumer no longer holds the scope (another took it over)."""

    def __init__(self, scope: str, fence: int) -> None:
        super().__init__(
            "CONCURRENCY_CONFLICT",
            f"lease on scope {scope!r} with fence {fence} is no longer held",
            scope=scope,
            fence=fence,
        )


class IngestBus(Protocol):
    def publish(
        self,
        tenant_id: str,
        requests: Sequence[Sequence[IngestRecord]],
        trace_ids: Sequence[str | None] | None = None,  # per request, for the bus batches
    ) -> list[Receipts | DuckMeshError]: ...

    def publish_upload(self, tenant_id: str, upload: UploadRequest) -> UploadReceipt: ...

    def upload_receipt(
        self, tenant_id: str, table_id: str, key: str, content_hash: bytes
    ) -> UploadReceipt | None: ...

    def claim(
        self, consumer_id: str, *, limit: int, max_bytes: int, lease_s: float
    ) -> Batch | None: ...

    def ack(self, batch: Batch, *, tx: Any = None) -> None: ...

    def nack(self, batch: Batch, reason: str, *, retry_after_s: float = 0.0) -> None: ...

    def extend_lease(self, batch: Batch, lease_s: float) -> None: ...

    def requeue_expired(self) -> int: ...

    def release(self, consumer_id: str) -> int: ...

    def latest_token(self, tenant_id: str) -> int: ...

    def committed_token(self, tenant_id: str) -> int: ...

    def quarantine(
        self, batch: Batch, entries: Sequence[QuarantineEntry], *, tx: Any = None
    ) -> None: ...

    def quarantined(self, tenant_id: str, recent: int = 10) -> tuple[int, list[dict[str, Any]]]: ...

    def prune(self, tenant_id: str, *, window_s: float, chunk_tokens: int) -> BusPrune: ...

    def retained(self, tenant_id: str) -> BusRetained: ...

    def advance_tokens(self, tenant_id: str, gap: int, *, tx: Any = None) -> TokenJump: ...

    def lag(self) -> dict[str, tuple[int, int]]: ...

    def ingested_at(self, tokens: dict[str, int]) -> dict[str, dt.datetime]: ...
