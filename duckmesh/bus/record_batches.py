"""JSON record requests on the columnar bus (ADR 0014).

A group-commit flush of validated records is planned in Python (a key used
twice in the group is a duplicate or a conflict, as before), its new records
are converted to Arrow per run of one table and schema version, and then
written by ONE statement: it bumps the tenant's token counter (the row lock
that orders commits), inserts the per-row keys into ``bus_row_key`` (whose
primary key makes a key used before fail the statement) and the runs as
Arrow IPC into ``bus_batch``, and notifies. Token offsets are relative to
the counter's value, which the statement itself reads under the lock, so
tokens stay per-tenant, gapless and commit-ordered, and a request's new
records are contiguous.

A record whose payload cannot be converted (or whose table is unknown) is
kept as JSON in ``bus_record``; the coordinator converts it at commit time
and quarantines it if it fails there too.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate, chain, repeat
from typing import Any

import attrs
import pyarrow as pa

from duckmesh import unsafe
from duckmesh.bus.batches import CHUNK_ROWS, ipc
from duckmesh.bus.protocol import (
    IngestRecord,
    NewReceipts,
    Receipt,
    Receipts,
    RecordColumns,
    RecordSequence,
)
from duckmesh.bus.record_arrow import payloads_to_arrow, user_schema
from duckmesh.catalog.model import TableDef
from duckmesh.db import Conn
from duckmesh.errors import DuckMeshError
from duckmesh.tracing import bounded

# Per-row columns of a batch of records; user columns never start with _dm_.
OP_COLUMN = "_dm_op"
EVENT_TIME_COLUMN = "_dm_event_time"
MIXED_OP = "mixed"  # bus_batch.op when each row's op is in OP_COLUMN
_UTC_US = pa.timestamp("us", tz="UTC")

Defs = Callable[[str, int], TableDef | None]  # (table_id, schema_version) -> definition


@attrs.frozen
class GroupPlan:
    """Per-request results of a group and the new records in token order.

    Tokens are ``start + 1 ..`` for the new records; ``clean`` means no
    duplicate and no conflict (then every receipt is a new record's).
    ``starts``: (offset in ``new`` of its first new record, request index)
    per request that has new records, in order."""

    results: list[Receipts | DuckMeshError]
    new: Sequence[IngestRecord]  # a Joined when every request came as columns
    clean: bool
    starts: list[tuple[int, int]] = attrs.Factory(list)


class Joined(RecordSequence):
    """The records of several requests held as columns, one after the other
    (the new records of a clean group of ``RecordColumns``)."""

    __slots__ = ("_ends", "parts")

    def __init__(self, parts: Sequence[RecordColumns]) -> None:
        self.parts = parts
        self._ends = list(accumulate(map(len, parts)))

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def _at(self, i: int) -> IngestRecord:
        part = bisect.bisect_right(self._ends, i)
        return self.parts[part][i - (self._ends[part - 1] if part else 0)]

    def __iter__(self) -> Iterator[IngestRecord]:
        return chain.from_iterable(self.parts)


def _conflict(rec: IngestRecord, index: int, token: int, first_index: int | None) -> DuckMeshError:
    """A key reused with another payload. Within one request (``first_index``
    set) the first use's token was never committed, so it is not named."""
    if first_index is not None:
        return DuckMeshError(
            "IDEMPOTENCY_CONFLICT",
            f"records {first_index} and {index} of this request use idempotency key"
            f" {rec.idempotency_key!r} with different payloads",
            record_index=index,
            first_record_index=first_index,
            idempotency_key=rec.idempotency_key,
        )
    return DuckMeshError(
        "IDEMPOTENCY_CONFLICT",
        f"idempotency key {rec.idempotency_key!r} was already used with a different payload",
        record_index=index,
        idempotency_key=rec.idempotency_key,
        original_token=token,
    )


def plan_group(
    requests: Sequence[Sequence[IngestRecord]],
    existing: dict[tuple[str, str], tuple[int, bytes]],
    start: int,
) -> GroupPlan:
    """Decide every request's outcome: each is all-or-nothing."""
    if not existing:
        fast = _plan_columns(requests, start)
        if fast is not None:
            return fast
    known = dict(existing)
    results: list[Receipts | DuckMeshError] = []
    new: list[IngestRecord] = []
    starts: list[tuple[int, int]] = []
    token, clean = start, True
    for request_index, req in enumerate(requests):
        receipts: list[Receipt] = []
        staged: list[IngestRecord] = []
        seen: dict[tuple[str, str], tuple[int, bytes]] = {}
        first_index: dict[tuple[str, str], int] = {}  # record index of a key's first use
        conflict: DuckMeshError | None = None
        for index, rec in enumerate(req):
            key = (rec.table_id, rec.idempotency_key)
            prior = known.get(key) or seen.get(key)
            if prior is not None:
                clean = False
                if prior[1] != rec.payload_hash:
                    conflict = _conflict(rec, index, prior[0], first_index.get(key))
                    break
                receipts.append(Receipt(prior[0], True))
                continue
            token += 1
            seen[key] = (token, rec.payload_hash)
            first_index[key] = index
            # TEST ONLY (token_order): the receipt names a token below the record's own.
            receipts.append(Receipt(token - unsafe.broken("token_order"), False))
            staged.append(rec)
        if conflict is not None:
            token -= len(staged)  # the request fails whole: its tokens go back
            results.append(conflict)
            continue
        known.update(seen)
        if staged:
            starts.append((len(new), request_index))
        new.extend(staged)
        results.append(receipts)
    return GroupPlan(results, new, clean, starts)


def _plan_columns(requests: Sequence[Sequence[IngestRecord]], start: int) -> GroupPlan | None:
    """``plan_group`` of requests that all came as columns and share no key
    (then every record is new), without an object per record; else None."""
    if not all(type(r) is RecordColumns for r in requests):
        return None
    parts: list[RecordColumns] = list(requests)  # type: ignore[arg-type]
    seen: dict[str, set[str]] = {}
    for part in parts:
        keys = seen.setdefault(part.table_id, set())
        before = len(keys)
        keys.update(part.keys)  # a request's keys are distinct (its columns were checked)
        if len(keys) != before + len(part):
            return None  # a key another request of the group uses: decided one by one
    # TEST ONLY (token_order): the receipt names a token below the record's own.
    token = start - unsafe.broken("token_order")
    results: list[Receipts | DuckMeshError] = []
    starts: list[tuple[int, int]] = []
    offset = 0
    for index, part in enumerate(parts):
        results.append(NewReceipts(token + offset + 1, len(part)))
        starts.append((offset, index))
        offset += len(part)
    return GroupPlan(results, Joined(parts), True, starts)


def tables(new: Sequence[IngestRecord]) -> set[tuple[str, int]]:
    """The (table, schema version) pairs of ``new``."""
    if isinstance(new, Joined):
        return {(p.table_id, p.schema_version) for p in new.parts}
    return {(r.table_id, r.schema_version) for r in new}


def rebased(plan: GroupPlan, base: int) -> list[Receipts | DuckMeshError]:
    """The receipts of a clean plan made from token 0, from ``base`` instead."""
    return [
        NewReceipts(r.first + base, r.n)
        if isinstance(r, NewReceipts)
        else [Receipt(x.token + base, False) for x in r]
        for r in plan.results
        if not isinstance(r, DuckMeshError)
    ]


Owners = Sequence[tuple[int, str | None]]  # (offset in new of a request's first record, trace id)


def owners(plan: GroupPlan, trace_ids: Sequence[str | None] | None) -> Owners:
    """Which request's trace id each stretch of ``plan.new`` carries."""
    if not trace_ids:
        return ()
    return [(offset, trace_ids[index]) for offset, index in plan.starts]


def _run_traces(owned: Owners, offsets: list[int], first: int, last: int) -> str | None:
    """The trace ids of the requests owning new records ``first..last``
    (1-based; ``offsets``: ``owned``'s), space-separated (hex ids hold no
    space), or None."""
    if not owned:
        return None
    lo = max(0, bisect.bisect_right(offsets, first - 1) - 1)
    hi = bisect.bisect_right(offsets, last - 1)
    return " ".join(bounded(t for _, t in owned[lo:hi])) or None


@attrs.define
class Encoded:
    """The rows of one statement, tokens as offsets from the counter's value.

    The per-row keys travel as three text parameters rather than four arrays
    (psycopg dumping 4 arrays of N elements was ~17% of a JSON request's API
    CPU): the table ids and keys as JSON arrays, the hashes as one byte
    string of 32 bytes a row; a row's offset is its position (1-based)."""

    table_ids: str = "[]"  # JSON array, one per new record
    keys: str = "[]"  # JSON array of idempotency keys
    # The records' SHA-256 digests, concatenated: bytea, as a substring of
    # text walks its characters from the start (quadratic in the flush).
    hashes: bytes = b""
    # first, last, table, op, event time column, schema version, Arrow IPC, trace ids
    batches: list[tuple[int, int, str, str, str | None, int, bytes, str | None]] = attrs.Factory(
        list
    )
    fallback: list[tuple[int, IngestRecord]] = attrs.Factory(list)  # (offset, record) as JSON


_dump_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _built_rows(table: TableDef, run: Sequence[IngestRecord]) -> pa.Table | None:
    """A run's rows from the Arrow its records point at (built when they
    were validated), or None when one does not point at rows of ``table``'s
    schema. Consecutive rows of one request are one slice."""
    pieces: list[pa.Table] = []
    src, start, end = None, 0, 0
    for rec in run:
        if rec.arrow is None:
            return None
        if rec.arrow is src and rec.arrow_row == end:
            end += 1
            continue
        if src is not None:
            pieces.append(src.slice(start, end - start))
        src, start, end = rec.arrow, rec.arrow_row, rec.arrow_row + 1
    if src is not None:
        pieces.append(src.slice(start, end - start))
    schema = user_schema(table)
    if not pieces or any(not p.schema.equals(schema) for p in pieces):
        return None
    return pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces)


@attrs.define
class Segments:
    """A run of new records as slices ``(part, lo, hi)`` of requests held as
    columns, all of one table and schema version."""

    table_id: str
    schema_version: int
    pieces: list[tuple[RecordColumns, int, int]]

    def __len__(self) -> int:
        return sum(hi - lo for _, lo, hi in self.pieces)

    def __iter__(self) -> Iterator[IngestRecord]:
        return (part[i] for part, lo, hi in self.pieces for i in range(lo, hi))

    def column(self, name: str) -> list[Any]:
        """One column of the run's records (``RecordColumns`` attribute ``name``)."""
        out: list[Any] = []
        for part, lo, hi in self.pieces:
            out += getattr(part, name)[lo:hi]
        return out

    def rows(self, table: TableDef) -> pa.Table | None:
        """The run's rows from its requests' Arrow, as ``_built_rows``."""
        schema = user_schema(table)
        pieces = []
        for part, lo, hi in self.pieces:
            if part.arrow is None or not part.arrow.schema.equals(schema):
                return None
            pieces.append(part.arrow.slice(lo, hi - lo))
        return pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces)


Run = Sequence[IngestRecord] | Segments


def _run_table(table: TableDef, run: Run) -> tuple[pa.Table, str, str | None]:
    """A run's rows as Arrow with the per-row op and event time columns it
    needs; raises ValueError when a payload does not convert."""
    if isinstance(run, Segments):
        user, ops, times = run.rows(table), run.column("ops"), run.column("times")
    else:
        user, ops, times = _built_rows(table, run), [r.op for r in run], [r.event_time for r in run]
    if user is None:
        texts = run.column("texts") if isinstance(run, Segments) else [r.payload for r in run]
        user, kept, bad = payloads_to_arrow(table, texts)
        if bad or user is None or len(kept) != len(texts):
            raise ValueError("a payload does not convert")
    used = set(ops)
    op = next(iter(used)) if len(used) == 1 else MIXED_OP
    if op == MIXED_OP:
        user = user.append_column(OP_COLUMN, pa.array(ops, pa.string()))
    if times.count(None) == len(times):
        return user, op, None
    # An instant outside 0001..9999 in UTC raises OverflowError: the run is
    # kept as JSON, where the claim sets it aside with its defect.
    utc = pa.array([t and t.astimezone(dt.UTC) for t in times], _UTC_US)
    return user.append_column(EVENT_TIME_COLUMN, utc), op, EVENT_TIME_COLUMN


# Payload bytes per stored batch: a bytea value holds at most 1 GB, and a
# flush may carry 50,000 records of up to DUCKMESH_MAX_RECORD_BYTES each.
RUN_BYTES = 64 << 20


def runs(
    new: Sequence[IngestRecord], max_rows: int = CHUNK_ROWS, max_bytes: int = RUN_BYTES
) -> list[tuple[int, list[IngestRecord]]]:
    """(offset of the first, records) per run of one table and schema
    version, each at most ``max_rows`` records and about ``max_bytes`` of
    payload (at least one record)."""
    out: list[tuple[int, list[IngestRecord]]] = []
    size = 0
    for i, rec in enumerate(new):
        if out:
            head = out[-1][1]
            same = head[0].table_id == rec.table_id and head[0].schema_version == rec.schema_version
            if same and len(head) < max_rows and size + len(rec.payload) <= max_bytes:
                head.append(rec)
                size += len(rec.payload)
                continue
        out.append((i + 1, [rec]))
        size = len(rec.payload)
    return out


def column_runs(
    parts: Sequence[RecordColumns], max_rows: int = CHUNK_ROWS, max_bytes: int = RUN_BYTES
) -> list[tuple[int, Segments]]:
    """``runs`` of the records of ``parts`` (the same cuts), as slices of
    their columns: a request that fits in the current run joins it whole."""
    out: list[tuple[int, Segments]] = []
    rows = size = offset = 0
    for part in parts:
        sizes = list(map(len, part.texts))
        run = out[-1][1] if out else None
        same = (
            run is not None
            and run.table_id == part.table_id
            and run.schema_version == part.schema_version
        )
        if run is not None and same and rows + len(part) <= max_rows:
            total = sum(sizes)
            if size + total <= max_bytes:
                run.pieces.append((part, 0, len(part)))
                rows, size, offset = rows + len(part), size + total, offset + len(part)
                continue
        for i, n in enumerate(sizes):  # record by record, as ``runs`` cuts
            run = out[-1][1] if out else None
            if run is not None and same and rows < max_rows and size + n <= max_bytes:
                rows, size = rows + 1, size + n
                last = run.pieces[-1]
                if last[0] is part:
                    run.pieces[-1] = (part, last[1], i + 1)
                else:
                    run.pieces.append((part, i, i + 1))
            else:
                seg = Segments(part.table_id, part.schema_version, [(part, i, i + 1)])
                out.append((offset + i + 1, seg))
                rows, size, same = 1, n, True
        offset += len(part)
    return out


def encode(
    new: Sequence[IngestRecord],
    defs: Defs,
    owned: Owners = (),
    *,
    max_rows: int = CHUNK_ROWS,
    max_bytes: int = RUN_BYTES,
) -> Encoded:
    """The statement's rows for the new records; records of requests held as
    columns (``Joined``) are read column by column, to the same result."""
    cut: Sequence[tuple[int, Run]]
    if isinstance(new, Joined):
        parts = new.parts
        out = Encoded(
            table_ids=_dump_json(
                list(chain.from_iterable(repeat(p.table_id, len(p)) for p in parts))
            ),
            keys=_dump_json(list(chain.from_iterable(p.keys for p in parts))),
            hashes=b"".join(chain.from_iterable(p.hashes for p in parts)),
        )
        cut = column_runs(parts, max_rows, max_bytes)
    else:
        out = Encoded(
            table_ids=_dump_json([r.table_id for r in new]),
            keys=_dump_json([r.idempotency_key for r in new]),
            hashes=b"".join([r.payload_hash for r in new]),
        )
        cut = runs(new, max_rows, max_bytes)
    offsets = [o for o, _ in owned]
    for first, run in cut:
        head = run if isinstance(run, Segments) else run[0]
        table = defs(head.table_id, head.schema_version)
        try:
            if table is None:
                raise ValueError("unknown table")
            rows, op, event_time_column = _run_table(table, run)
        except (ValueError, TypeError, OverflowError, pa.ArrowException):
            out.fallback.extend((first + j, rec) for j, rec in enumerate(run))
            continue
        last = first + len(run) - 1
        traces = _run_traces(owned, offsets, first, last)
        out.batches.append(
            (
                first,
                last,
                table.table_id,
                op,
                event_time_column,
                table.schema_version,
                ipc(rows),
                traces,
            )
        )
    return out


_INSERT = (
    "WITH c AS (UPDATE bus_token_counter SET last_token = last_token + %(n)s"
    "  WHERE tenant_id = %(t)s RETURNING last_token - %(n)s AS base, now() AS at),"
    " k AS (INSERT INTO bus_row_key (tenant_id, table_id, idempotency_key, token, row_hash)"
    "  SELECT %(t)s, x.table_id, x.key, c.base + x.off,"
    "  encode(substring(%(kh)s::bytea FROM (x.off * 32 - 31)::integer FOR 32), 'hex') FROM c,"
    "  ROWS FROM (json_array_elements_text(%(kt)s::json), json_array_elements_text(%(kk)s::json))"
    "  WITH ORDINALITY AS x(table_id, key, off)),"
    " b AS (INSERT INTO bus_batch (tenant_id, first_token, last_token, table_id, op,"
    "  event_time_column, ingested_at, schema_version, data, trace_ids)"
    "  SELECT %(t)s, c.base + x.f, c.base + x.l, x.table_id, x.op, x.etc, c.at, x.v, x.data,"
    "  string_to_array(x.tr, ' ')"
    "  FROM c, unnest(%(bf)s::bigint[], %(bl)s::bigint[], %(bt)s::text[], %(bo)s::text[],"
    "  %(be)s::text[], %(bv)s::integer[], %(bd)s::bytea[], %(br)s::text[])"
    "  AS x(f, l, table_id, op, etc, v, data, tr))"
    " SELECT c.base, c.at, pg_notify(%(ch)s, %(t)s || ':' || (c.base + %(n)s)) FROM c"
)


def insert(
    conn: Conn, tenant_id: str, enc: Encoded, n: int, channel: str
) -> tuple[int, Any] | None:
    """Take ``n`` tokens and write the keys and batches in one statement;
    (base, ingest time) — the new tokens are base+1..base+n — or None when the
    tenant has no counter yet. A key used before raises UniqueViolation."""
    cols: list[list[Any]] = [list(c) for c in zip(*enc.batches, strict=True)] or [[]] * 8
    keys = (enc.table_ids, enc.keys, enc.hashes)
    if unsafe.broken("skip_idempotency"):  # TEST ONLY: no key is recorded
        keys = ("[]", "[]", b"")
    row = conn.execute(
        _INSERT,
        {
            "n": n,
            "t": tenant_id,
            "kt": keys[0],
            "kk": keys[1],
            "kh": keys[2],
            **dict(zip(("bf", "bl", "bt", "bo", "be", "bv", "bd", "br"), cols, strict=True)),
            "ch": channel,
        },
        binary=True,
    ).fetchone()
    return None if row is None else (int(row[0]), row[1])
