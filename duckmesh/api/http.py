"""HTTP plumbing shared by every route: JSON bodies, errors, auth, trace ids.

Errors always leave as the spec's body ``{error_code, message, retryable,
context, trace_id}``. Authentication takes the tenant and roles from the API
key alone (never from a header a client could forge); roles deny by default.
Verified keys are cached briefly and the cache is dropped on every tenant
event (key issued or revoked), so revocation applies at once in this process
and within ``KEY_CACHE_S`` elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import time
from typing import Any

import attrs
import structlog
from quart import Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from duckmesh.auth import hash_key, key_id_for, matches
from duckmesh.catalog import reads
from duckmesh.catalog.commands import stream_tenant
from duckmesh.db import Database
from duckmesh.errors import DuckMeshError

KEY_CACHE_S = 30.0
# Deepest array/object nesting a request body may have (a record's payload
# sits at level 4; a JSON column value gets the remaining levels).
MAX_JSON_DEPTH = 64
# W3C trace context: version-trace_id-parent_id-flags; version ff and all-zero
# ids are invalid (a future version may append fields after the flags).
_TRACEPARENT = re.compile(
    r"^(?!ff)([0-9a-f]{2})-(?!0{32})([0-9a-f]{32})-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(-.*)?$"
)
log = structlog.get_logger("duckmesh.api")
# 5xx answers that report a known state of the server, not a failure: info lines.
EXPECTED_STATES = frozenset({"SHUTTING_DOWN", "DISK_LOW"})
encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@attrs.frozen
class Principal:
    tenant_id: str
    roles: frozenset[str]
    key_id: str


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        encode_json(body), status=status, content_type="application/json", headers=headers
    )


def error_response(exc: DuckMeshError) -> Response:
    """The spec's error body; also one log line with the code (trace and
    tenant ids come from the context). Never logs the request itself."""
    headers = {}
    if exc.http_status in (429, 507):  # RATE_LIMITED, QUOTA_EXCEEDED, DISK_LOW
        headers["Retry-After"] = str(exc.context.get("retry_after_s", 1))
    status = exc.http_status
    (log.error if status >= 500 and exc.error_code not in EXPECTED_STATES else log.info)(
        "request failed",
        method=request.method,
        path=request.path,
        status=status,
        error_code=exc.error_code,
    )
    return json_response(exc.body(current_trace_id()), status, headers)


def current_trace_id() -> str | None:
    ctx = structlog.contextvars.get_contextvars()
    value = ctx.get("trace_id")
    return value if isinstance(value, str) else None


def start_trace() -> str:
    header = request.headers.get("traceparent", "")
    match = _TRACEPARENT.match(header.strip().lower())
    # Version 00 has exactly four fields; only later versions may add more.
    valid = match is not None and not (match.group(1) == "00" and match.group(3))
    trace_id = match.group(2) if match and valid else f"{random.getrandbits(128):032x}"
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(trace_id=trace_id)
    return trace_id


def _refuse_constant(name: str) -> Any:
    # Python's json reads NaN/Infinity/-Infinity, which are not JSON (RFC 8259).
    raise ValueError(f"{name} is not a JSON value")


def _nesting_within(value: Any, limit: int) -> bool:
    """Whether no array or object in ``value`` is nested deeper than ``limit``
    (iterative: a hostile body must not exhaust the stack here either). One
    level at a time, each a list comprehension: a 1,000-record body is
    walked in a fraction of its parse time."""
    level = [value]
    for _ in range(limit):
        level = [
            child
            for item in level
            for child in (item.values() if type(item) is dict else item)
            if type(child) is dict or type(child) is list
        ]
        if not level:
            return True
    return False


def parse_json(data: bytes | str) -> Any:
    """Strict JSON of a request: no NaN/Infinity, at most ``MAX_JSON_DEPTH`` levels."""
    try:
        value = json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        value = None
        deep = True
    except (ValueError, UnicodeDecodeError) as exc:
        raise DuckMeshError("BAD_REQUEST", f"the body is not valid JSON: {exc}") from None
    else:
        # Fewer brackets than the limit cannot nest deeper: skip the walk.
        raw = data.encode() if isinstance(data, str) else data
        deep = raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and not _nesting_within(
            value, MAX_JSON_DEPTH
        )
    if deep:
        raise DuckMeshError(
            "BAD_REQUEST",
            f"the body nests arrays/objects deeper than {MAX_JSON_DEPTH} levels",
            max_depth=MAX_JSON_DEPTH,
        )
    return value


async def receive_body() -> None:
    """Wait until the whole request body has arrived, before any response.

    When a response ends before Hypercorn (h11) has taken in the request
    body, it gives up the keep-alive connection, and a client (httpx,
    requests) may wait for that response forever: found by the API fuzzer,
    a 401/404/405 to a request with a body hung about one time in ten
    (tests/api/test_keepalive.py). The body is bounded by
    MAX_CONTENT_LENGTH; a larger one is refused (413) by the route that
    reads it.
    """
    with contextlib.suppress(RequestEntityTooLarge):
        await request.body


async def json_body() -> dict[str, Any]:
    body = parse_json(await request.get_data(cache=False))
    if not isinstance(body, dict):
        raise DuckMeshError("BAD_REQUEST", "the body must be a JSON object")
    return body


class Authenticator:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[str, tuple[Principal | None, float]] = {}

    def invalidate(self, stream: str) -> None:
        if stream_tenant(stream, "tenant") is not None:
            self._cache.clear()

    async def principal(self) -> Principal:
        key = ""
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
        elif "X-API-Key" in request.headers:
            key = request.headers["X-API-Key"].strip()
        if not key:
            raise DuckMeshError(
                "UNAUTHENTICATED",
                "an API key is required (Authorization: Bearer <key> or X-API-Key)",
            )
        digest = hash_key(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is None or cached[1] < now:
            principal = await self._lookup(digest)
            cached = (principal, now + KEY_CACHE_S)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = cached
        if cached[0] is None:
            raise DuckMeshError("UNAUTHENTICATED", "the API key is not valid")
        structlog.contextvars.bind_contextvars(tenant_id=cached[0].tenant_id)
        return cached[0]

    async def _lookup(self, digest: str) -> Principal | None:
        key_id = key_id_for(digest)
        row = await self.db.run(lambda c: reads.lookup_key(c, key_id), transaction=False)
        if row is None:
            return None
        tenant_id, stored, roles, usable, status = row
        if not usable or status != "active" or not matches(stored, digest):
            return None
        return Principal(tenant_id, frozenset(roles), key_id)
