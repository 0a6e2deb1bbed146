"""Request bodies and query-string parameters, parsed once at the edge.

Each route turns its JSON object into one of these attrs types before
calling a service; a bad field fails here with the spec's error body
(``VALIDATION_FAILED`` naming the field), so nothing is half-applied.
A new table's definition is ``catalog.table_requests.CreateTableRequest``
(the catalog's own type, also used by other callers); a schema change is
checked against the current schema by ``catalog.commands.evolve_table``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import attrs
from quart import request

from duckmesh.errors import DuckMeshError
from duckmesh.ingest.validation import IngestOptions, parse_options
from duckmesh.query.service import QueryRequest, QueryService

# Largest integer a request may give for an id, token, limit or timeout: the
# catalog stores them as Postgres BIGINT.
MAX_INT = 2**63 - 1


def _refuse_unknown(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise DuckMeshError("VALIDATION_FAILED", f"unknown keys {unknown}", field=unknown[0])


def int_field(body: dict[str, Any], name: str, lo: int = 0) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) is not int or not lo <= value <= MAX_INT:
        raise DuckMeshError(
            "VALIDATION_FAILED", f"{name} must be an integer from {lo} to {MAX_INT}", field=name
        )
    return value


def int_arg(name: str, lo: int = 0, hi: int = MAX_INT) -> int | None:
    """An integer query-string parameter in ``lo..hi`` (ids are Postgres BIGINTs)."""
    raw = request.args.get(name)
    if raw is None:
        return None
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 19 else -1
    if not lo <= value <= hi:
        raise DuckMeshError(
            "VALIDATION_FAILED", f"{name} must be an integer from {lo} to {hi}", field=name
        )
    return value


def time_field(body: dict[str, Any], name: str) -> dt.datetime | None:
    value = body.get(name)
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise DuckMeshError(
            "VALIDATION_FAILED", f"{name} must be an ISO 8601 timestamp", field=name
        )
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed


@attrs.frozen
class IngestBody:
    """``POST /v1/ingest/{table}``; ``records`` are checked against the table later."""

    records: Any
    options: IngestOptions

    _KEYS = frozenset({"records", "wait_for_visibility", "visibility_timeout_ms"})

    @classmethod
    def parse(cls, body: dict[str, Any], max_timeout_ms: int) -> IngestBody:
        _refuse_unknown(body, cls._KEYS)
        return cls(body.get("records"), parse_options(body, max_timeout_ms))


@attrs.frozen
class QueryBody:
    """``POST /v1/query``."""

    sql: str
    params: list[Any] | None
    snapshot_id: int | None
    snapshot_time: dt.datetime | None
    min_visibility_token: int | None
    consistency_timeout_ms: int | None
    row_limit: int | None

    _KEYS = frozenset(
        {
            "sql",
            "params",
            "snapshot_id",
            "snapshot_time",
            "min_visibility_token",
            "consistency_timeout_ms",
            "row_limit",
        }
    )

    @classmethod
    def parse(cls, body: dict[str, Any]) -> QueryBody:
        _refuse_unknown(body, cls._KEYS)
        sql = body.get("sql")
        if not isinstance(sql, str) or not sql.strip():
            raise DuckMeshError("VALIDATION_FAILED", "sql must be a non-empty string", field="sql")
        params = body.get("params")
        if params is not None and not isinstance(params, list):
            raise DuckMeshError("VALIDATION_FAILED", "params must be an array", field="params")
        snapshot_id = int_field(body, "snapshot_id", 1)
        snapshot_time = time_field(body, "snapshot_time")
        token = int_field(body, "min_visibility_token")
        if snapshot_id is not None and snapshot_time is not None:
            raise DuckMeshError(
                "VALIDATION_FAILED", "give at most one of snapshot_id and snapshot_time"
            )
        if snapshot_time is not None and token is not None:
            raise DuckMeshError(
                "TOKEN_SCOPE_MISMATCH",
                "min_visibility_token cannot apply to a snapshot chosen by time",
            )
        timeout_ms = int_field(body, "consistency_timeout_ms")
        return cls(
            sql,
            params,
            snapshot_id,
            snapshot_time,
            token,
            timeout_ms,
            int_field(body, "row_limit", 1),
        )

    def to_request(self, queries: QueryService) -> QueryRequest:
        timeout_ms = self.consistency_timeout_ms
        return QueryRequest(
            sql=self.sql,
            params=self.params,
            snapshot_id=self.snapshot_id,
            snapshot_time=self.snapshot_time,
            min_visibility_token=self.min_visibility_token,
            consistency_timeout_s=None
            if timeout_ms is None
            else queries.consistency_timeout(timeout_ms),
            row_limit=self.row_limit,
        )


@attrs.frozen
class RestoreBody:
    """``POST /v1/snapshots/restore``."""

    snapshot_id: int

    @classmethod
    def parse(cls, body: dict[str, Any]) -> RestoreBody:
        snapshot_id = int_field(body, "snapshot_id", 1)
        unknown = set(body) - {"snapshot_id"}
        if snapshot_id is None or unknown:
            raise DuckMeshError(
                "VALIDATION_FAILED",
                'the body is {"snapshot_id": <integer from 1>}',
                unknown=sorted(unknown),
            )
        return cls(snapshot_id)


@attrs.frozen
class PinBody:
    """``POST /v1/snapshots/pin``."""

    snapshot_id: int
    pinned: bool
    reason: str

    @classmethod
    def parse(cls, body: dict[str, Any]) -> PinBody:
        snapshot_id = int_field(body, "snapshot_id", 1)
        pinned = body.get("pinned", True)
        reason = body.get("reason", "")
        if snapshot_id is None or not isinstance(pinned, bool) or not isinstance(reason, str):
            raise DuckMeshError(
                "VALIDATION_FAILED", "snapshot_id (integer), pinned (boolean), reason (string)"
            )
        return cls(snapshot_id, pinned, reason)
