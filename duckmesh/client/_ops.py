"""The client's operations, written once for the sync and the async client.

Each operation is a generator: it yields the ``Call``s it needs and receives
each successful ``httpx.Response`` back, then returns its result (the
psycopg habit: protocol logic apart from the waiting). ``Client`` and
``AsyncClient`` only drive generators and own the retry loop
(``retry_delay``), so both behave the same by construction.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import urllib.parse
import uuid
from collections.abc import Generator, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import pyarrow as pa

from duckmesh.client.errors import ApiError, error_class

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")
ARROW = "application/vnd.apache.arrow.stream"
JSON = "application/json"
# Errors worth retrying are the ones the server marks retryable, but a
# consistency timeout already waited as long as the caller asked.
_NOT_RETRIED = frozenset({"CONSISTENCY_TIMEOUT"})
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF_S = 5.0
RECORDS_PER_REQUEST = 10_000  # the server's default DUCKMESH_MAX_RECORDS_PER_REQUEST
ROWS_PER_UPLOAD = 100_000
_META = "duckmesh."


@attrs.frozen
class Call:
    """One HTTP request of an operation."""

    method: str
    path: str
    body: bytes | None = None
    params: Mapping[str, str] | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    # Whether a request that may have reached the server can be sent again:
    # ingest carries idempotency keys and reads change nothing; table
    # creation and drops are not repeated after a lost answer.
    resend: bool = True


Operation = Generator[Call, "httpx.Response", T]


@attrs.frozen
class IngestResult:
    """The receipts of one ``ingest`` call, summed over its requests."""

    accepted_count: int
    duplicate_count: int
    max_visibility_token: int
    visible_snapshot_id: int | None
    requests: int


@attrs.frozen
class QueryInfo:
    """What the server said about a result (its ``DuckMesh-*`` headers)."""

    snapshot_id: int | None
    snapshot_time: str | None
    max_visibility_token: int
    truncated: bool | None
    row_limit: int | None
    scanned_files: int
    scanned_bytes: int
    execution_ms: float


def raise_for_error(r: httpx.Response) -> httpx.Response:
    """``r`` when it succeeded; otherwise its error body as a typed exception."""
    if r.status_code < 400:
        return r
    try:
        body = r.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "error_code" not in body:
        raise ApiError(
            f"HTTP {r.status_code}: {r.text[:200]}",
            error_code="INTERNAL" if r.status_code >= 500 else "BAD_REQUEST",
            status=r.status_code,
            retryable=r.status_code in _RETRY_STATUS,
        )
    code = str(body["error_code"])
    raise error_class(code)(
        str(body.get("message", "")),
        error_code=code,
        status=r.status_code,
        retryable=bool(body.get("retryable")),
        context=body.get("context") or {},
        trace_id=body.get("trace_id"),
    )


def _retryable(r: httpx.Response) -> bool:
    if r.status_code < 400:
        return False
    try:
        body = r.json()
    except ValueError:
        return r.status_code in _RETRY_STATUS
    if not isinstance(body, dict) or "error_code" not in body:
        return r.status_code in _RETRY_STATUS
    return bool(body.get("retryable")) and body["error_code"] not in _NOT_RETRIED


def retry_delay(call: Call, attempt: int, retries: int, r: httpx.Response | None) -> float | None:
    """Seconds to wait before sending ``call`` again, or None to stop here.

    ``r`` is None when the request failed in transport (it may or may not
    have reached the server). Backoff is exponential with jitter, and
    ``Retry-After`` is honoured."""
    if attempt >= retries:
        return None
    if r is None:
        if not call.resend:
            return None
    elif not _retryable(r):
        return None
    delay: float = min(MAX_BACKOFF_S, 0.05 * 2.0**attempt) * (0.5 + random.random() / 2)  # noqa: S311
    if r is not None and r.headers.get("Retry-After", "").isdigit():
        delay = max(delay, float(r.headers["Retry-After"]))
    return delay


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot send a {type(value).__name__} as JSON")


def json_call(
    method: str,
    path: str,
    body: Any,
    *,
    headers: Mapping[str, str] | None = None,
    resend: bool = True,
) -> Call:
    content = json.dumps(body, default=_json_default, ensure_ascii=False).encode()
    return Call(
        method, path, content, headers={"Content-Type": JSON, **(headers or {})}, resend=resend
    )


def _name(table: str) -> str:
    return urllib.parse.quote(table, safe="")


# -- tables and schema ----------------------------------------------------------


def _columns(columns: Sequence[Mapping[str, Any]] | Mapping[str, str]) -> list[dict[str, Any]]:
    if isinstance(columns, Mapping):
        return [{"name": name, "type": type_} for name, type_ in columns.items()]
    return [dict(column) for column in columns]


def create_table(
    name: str,
    columns: Sequence[Mapping[str, Any]] | Mapping[str, str],
    primary_key: Sequence[str] | None,
    partition_by: Any,
    retention: Any,
) -> Operation[dict[str, Any]]:
    body: dict[str, Any] = {"name": name, "columns": _columns(columns)}
    if primary_key:
        body["primary_key"] = list(primary_key)
    if partition_by is not None:
        body["partition_by"] = partition_by
    if retention is not None:
        body["retention"] = retention
    r = yield json_call("POST", "/v1/tables", body, resend=False)
    out: dict[str, Any] = r.json()
    return out


def get(path: str, params: Mapping[str, str] | None = None) -> Operation[Any]:
    r = yield Call("GET", path, params=params)
    return r.json()


def list_tables() -> Operation[list[dict[str, Any]]]:
    body = yield from get("/v1/tables")
    tables: list[dict[str, Any]] = body["tables"]
    return tables


def drop_table(name: str) -> Operation[None]:
    yield Call("DELETE", f"/v1/tables/{_name(name)}", resend=False)


def list_snapshots(limit: int) -> Operation[list[dict[str, Any]]]:
    body = yield from get("/v1/snapshots", {"limit": str(limit)})
    snaps: list[dict[str, Any]] = body["snapshots"]
    return snaps


def translate(question: str) -> Operation[dict[str, Any]]:
    r = yield json_call("POST", "/v1/query/translate", {"question": question})
    out: dict[str, Any] = r.json()
    return out


# -- ingest -----------------------------------------------------------------------


def as_arrow(data: Any) -> pa.Table | None:
    """``data`` as an Arrow table when it is tabular (an Arrow table or batch,
    or a pandas DataFrame, recognised without importing pandas); else None."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if type(data).__module__.startswith("pandas.") and hasattr(data, "columns"):
        return pa.Table.from_pandas(data, preserve_index=False)
    return None


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


@attrs.define
class _Totals:
    accepted: int = 0
    duplicates: int = 0
    token: int = 0
    snapshot_id: int | None = None
    requests: int = 0

    def add(self, receipt: Mapping[str, Any]) -> None:
        self.accepted += int(receipt["accepted_count"])
        self.duplicates += int(receipt["duplicate_count"])
        self.token = max(self.token, int(receipt["max_visibility_token"]))
        if receipt.get("visible_snapshot_id") is not None:
            self.snapshot_id = int(receipt["visible_snapshot_id"])
        self.requests += 1

    def result(self) -> IngestResult:
        return IngestResult(
            self.accepted, self.duplicates, self.token, self.snapshot_id, self.requests
        )


@attrs.frozen
class IngestOptions:
    op: str = "insert"
    wait: bool = False
    key_column: str | None = None
    idempotency_key: str | None = None
    event_time_column: str | None = None
    visibility_timeout_ms: int | None = None


def ingest(table: str, data: Any, options: IngestOptions) -> Operation[IngestResult]:
    """Send ``data`` in as few requests as the server takes; every request
    carries its idempotency keys, so a retry never writes a row twice.

    Records (mappings) go as JSON records, each keyed by ``key_column``'s
    value or ``<idempotency_key>-<index>``; Arrow tables and DataFrames go
    as Arrow IPC uploads of ``ROWS_PER_UPLOAD`` rows, keyed per row by
    ``key_column`` or per upload by ``Idempotency-Key: <idempotency_key>-<n>``.
    With ``wait``, every request waits until it is visible."""
    base = options.idempotency_key or uuid.uuid4().hex
    totals = _Totals()
    arrow = as_arrow(data)
    if arrow is not None:
        for n, start in enumerate(range(0, arrow.num_rows, ROWS_PER_UPLOAD)):
            rows = arrow.slice(start, ROWS_PER_UPLOAD)
            r = yield _upload_call(table, rows, options, f"{base}-{n}")
            totals.add(r.json())
        return totals.result()
    records = list(data)
    for start in range(0, len(records), RECORDS_PER_REQUEST):
        chunk = records[start : start + RECORDS_PER_REQUEST]
        body: dict[str, Any] = {
            "records": [
                _record(payload, start + i, base, options) for i, payload in enumerate(chunk)
            ],
            "wait_for_visibility": options.wait,
        }
        if options.visibility_timeout_ms is not None:
            body["visibility_timeout_ms"] = options.visibility_timeout_ms
        r = yield json_call("POST", f"/v1/ingest/{_name(table)}", body)
        totals.add(r.json())
    return totals.result()


def _record(payload: Any, index: int, base: str, options: IngestOptions) -> dict[str, Any]:
    if not isinstance(payload, Mapping):
        raise TypeError(f"record {index} is a {type(payload).__name__}, not a mapping")
    if options.key_column is None:
        key = f"{base}-{index}"
    elif payload.get(options.key_column) is None:
        raise ValueError(f"record {index} has no value for key_column {options.key_column!r}")
    else:
        key = str(payload[options.key_column])
    record: dict[str, Any] = {"idempotency_key": key, "op": options.op, "payload": dict(payload)}
    if options.event_time_column is not None:
        record["event_time"] = payload.get(options.event_time_column)
    return record


def _upload_call(table: str, rows: pa.Table, options: IngestOptions, key: str) -> Call:
    params = {"op": options.op}
    headers = {"Content-Type": ARROW}
    if options.key_column is not None:
        params["key_column"] = options.key_column
    else:
        headers["Idempotency-Key"] = key
    if options.event_time_column is not None:
        params["event_time_column"] = options.event_time_column
    if options.wait:
        params["wait_for_visibility"] = "true"
    if options.visibility_timeout_ms is not None:
        params["visibility_timeout_ms"] = str(options.visibility_timeout_ms)
    return Call("POST", f"/v1/ingest/{_name(table)}", _ipc(rows), params, headers)


# -- results ------------------------------------------------------------------------


def arrow_result(r: httpx.Response) -> pa.Table:
    """An Arrow stream response as a table, its headers kept as schema metadata."""
    table = pa.ipc.open_stream(r.content).read_all()
    meta = {
        f"{_META}{name.lower()[len('duckmesh-') :]}": value
        for name, value in r.headers.items()
        if name.lower().startswith("duckmesh-")
    }
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})


def query_info(table: pa.Table) -> QueryInfo:
    """What the server said about ``table`` (a result of ``query``)."""
    meta = {
        key.decode(): value.decode()
        for key, value in (table.schema.metadata or {}).items()
        if key.startswith(_META.encode())
    }

    def number(name: str) -> int | None:
        value = meta.get(_META + name)
        return int(value) if value else None

    truncated = meta.get(_META + "truncated")
    return QueryInfo(
        snapshot_id=number("snapshot-id"),
        snapshot_time=meta.get(_META + "snapshot-time"),
        max_visibility_token=number("max-visibility-token") or 0,
        truncated=None if truncated in (None, "unknown") else truncated == "true",
        row_limit=number("row-limit"),
        scanned_files=number("scanned-files") or 0,
        scanned_bytes=number("scanned-bytes") or 0,
        execution_ms=float(meta.get(_META + "execution-ms") or 0.0),
    )


@attrs.frozen
class QueryOptions:
    params: Sequence[Any] | None = None
    min_visibility_token: int | None = None
    snapshot_id: int | None = None
    snapshot_time: str | None = None
    row_limit: int | None = None
    consistency_timeout_ms: int | None = None


def query(sql: str, options: QueryOptions) -> Operation[pa.Table]:
    body: dict[str, Any] = {"sql": sql}
    for field in attrs.fields(QueryOptions):
        value = getattr(options, field.name)
        if value is not None:
            body[field.name] = list(value) if field.name == "params" else value
    r = yield json_call("POST", "/v1/query", body, headers={"Accept": ARROW})
    return arrow_result(r)


def changes(table: str, from_snapshot: int, to_snapshot: int | None) -> Operation[pa.Table]:
    params = {"from_snapshot": str(from_snapshot)}
    if to_snapshot is not None:
        params["to_snapshot"] = str(to_snapshot)
    r = yield Call("GET", f"/v1/tables/{_name(table)}/changes", None, params, {"Accept": ARROW})
    return arrow_result(r)


def tokens_seen(values: Iterable[int | None]) -> int:
    return max((v for v in values if v is not None), default=0)
