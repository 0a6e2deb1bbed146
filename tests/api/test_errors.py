"""Error bodies: every failure is ``{error_code, message, retryable, context,
trace_id}`` with the documented HTTP status, and carries a trace id (the one
of a W3C ``traceparent`` header when the client sent one)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, MutableMapping
from typing import Any

import httpx
import pytest
import structlog

from duckmesh.catalog import reads
from tests.api.helpers import assert_error
from tests.fixtures import EVENTS, LiveServer, StartApp

JSON_ENDPOINTS = [
    ("POST", "/v1/tables"),
    ("PATCH", "/v1/tables/events"),
    ("POST", "/v1/ingest/events"),
    ("POST", "/v1/query"),
    ("POST", "/v1/snapshots/pin"),
]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def traceparent(trace_id: str = TRACE) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}


# -- malformed bodies ------------------------------------------------------------


MALFORMED = [b"{not json", b'{"name": "x",}', b"", b"\xff\xfe{}", b'{"a": 1} trailing', b"NaNa"]
NOT_OBJECTS: list[Any] = [[], [{"name": "x"}], "orders", 1, 2.5, True, None]


@pytest.mark.parametrize(("method", "path"), JSON_ENDPOINTS)
async def test_malformed_json_is_400(server: LiveServer, method: str, path: str) -> None:
    await server.create_table(EVENTS)
    for content in MALFORMED:
        r = await server.client.request(
            method, path, content=content, headers={"Content-Type": "application/json"}
        )
        body = assert_error(r, 400, "BAD_REQUEST")
        assert "JSON" in body["message"], content


@pytest.mark.parametrize(("method", "path"), JSON_ENDPOINTS)
async def test_body_not_an_object_is_400(server: LiveServer, method: str, path: str) -> None:
    await server.create_table(EVENTS)
    for value in NOT_OBJECTS:
        r = await server.client.request(
            method,
            path,
            content=json.dumps(value).encode(),
            headers={"Content-Type": "application/json"},
        )
        body = assert_error(r, 400, "BAD_REQUEST")
        assert "object" in body["message"], value
    assert (await server.client.get("/v1/tables/events")).json()["schema_version"] == 1


# -- size limits -----------------------------------------------------------------

LIMIT = 2048


@pytest.fixture
async def small_server(start_app: StartApp) -> LiveServer:
    """A server with small request limits."""
    return await start_app(max_request_bytes=LIMIT, max_records_per_request=3, max_record_bytes=256)


def _records(n: int, pad: int = 0) -> list[dict[str, Any]]:
    return [{"idempotency_key": f"k{i}", "payload": {"id": i, "kind": "x" * pad}} for i in range(n)]


async def test_oversized_body_is_413(small_server: LiveServer) -> None:
    await small_server.create_table(EVENTS)
    big = {"records": _records(1, pad=LIMIT)}
    for method, path in JSON_ENDPOINTS:
        r = await small_server.client.request(method, path, json=big)
        body = assert_error(r, 413, "PAYLOAD_TOO_LARGE")
        assert body["retryable"] is False
    # Nothing of it was applied.
    assert (await small_server.client.get("/v1/tables/events")).json()["schema_version"] == 1
    assert (await small_server.client.get("/v1/lag")).json()["latest_token"] == 0


async def test_oversized_chunked_body_is_413(small_server: LiveServer) -> None:
    """No Content-Length: the limit still applies while the body streams in."""
    await small_server.create_table(EVENTS)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"records": [{"idempotency_key": "a", "payload": {"kind": "'
        for _ in range(LIMIT // 256 + 2):
            yield b"x" * 256
        yield b'"}}]}'

    r = await small_server.client.post(
        "/v1/ingest/events", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")
    q = await small_server.query("select count(*) from events")
    assert q.json()["rows"] == [[0]], q.text


async def test_record_limits_are_413(small_server: LiveServer) -> None:
    await small_server.create_table(EVENTS)
    r = await small_server.ingest("events", _records(4))
    body = assert_error(r, 413, "PAYLOAD_TOO_LARGE")
    assert body["context"] == {"limit": 3}
    r = await small_server.ingest("events", [*_records(2), *_records(1, pad=300)[:1]])
    body = assert_error(r, 413, "PAYLOAD_TOO_LARGE")
    assert body["context"]["limit"] == 256
    # Just under every limit is fine.
    r = await small_server.ingest("events", _records(3, pad=100))
    assert r.status_code == 200, r.text
    assert r.json()["accepted_count"] == 3


# -- routing ---------------------------------------------------------------------


UNKNOWN_PATHS = [
    "/v1/nope",
    "/nope",
    "/ui/a/b",  # (`/` redirects to the console since issue 17: tests/api/test_console.py)
    "/v1/tables/a/b",
    "/v2/tables",
    "/v1/snapshots/abc",
    "/v1/snapshots/-1",
]


async def test_unknown_route_is_404_with_error_body(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as anon:
        for path in UNKNOWN_PATHS:
            assert_error(await server.client.get(path), 404, "NOT_FOUND")
            assert_error(await anon.get(path), 404, "NOT_FOUND")
            assert_error(await anon.post(path, json={}), 404, "NOT_FOUND")
    # The message names the request, not the framework's generic text.
    body = assert_error(await server.client.get("/v1/snapshots/abc"), 404, "NOT_FOUND")
    assert body["message"] == "no route GET /v1/snapshots/abc"
    assert body["context"] == {"method": "GET", "path": "/v1/snapshots/abc"}


async def test_wrong_method_has_the_error_body(server: LiveServer) -> None:
    """No 405 code exists in the error catalogue: documented as 400 BAD_REQUEST."""
    for method, path in [
        ("PUT", "/v1/tables"),
        ("DELETE", "/v1/query"),
        ("POST", "/v1/health"),
        ("GET", "/v1/ingest/x"),
        ("GET", "/v1/snapshots/pin"),
    ]:
        body = assert_error(await server.client.request(method, path), 400, "BAD_REQUEST")
        assert body["message"] == f"{method} is not allowed on {path}"
        assert body["context"]["allowed_methods"], body


# -- unexpected failures -----------------------------------------------------------


async def test_unexpected_exception_is_500_internal(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any) -> Any:
        raise RuntimeError("boom: secret internals")

    monkeypatch.setattr(reads, "list_tables", broken)
    r = await server.client.get("/v1/tables", headers=traceparent())
    body = assert_error(r, 500, "INTERNAL")
    assert body["retryable"] is True
    assert body["trace_id"] == TRACE
    assert "boom" not in r.text


# -- trace ids -------------------------------------------------------------------


async def _error_responses(server: LiveServer, headers: dict[str, str]) -> list[httpx.Response]:
    """One error response of each kind, all sent with ``headers``."""
    c = server.client
    async with httpx.AsyncClient(base_url=server.base_url) as anon:
        return [
            await anon.get("/v1/tables", headers=headers),  # 401
            await anon.get("/v1/tables", headers={**headers, "X-API-Key": "bad"}),  # 401
            await c.get("/v1/nope", headers=headers),  # 404 route
            await c.get("/v1/tables/nope", headers=headers),  # 404 table
            await c.post("/v1/tables", content=b"{", headers=headers),  # 400 JSON
            await c.post("/v1/tables", json={"name": "1"}, headers=headers),  # 400 validation
            await c.put("/v1/tables", headers=headers),  # 400 method
            await c.post(
                "/v1/query",
                json={"sql": "select 1", "min_visibility_token": 10**9},
                headers=headers,
            ),  # 400 token
        ]


async def test_every_error_has_a_fresh_trace_id(server: LiveServer) -> None:
    responses = await _error_responses(server, {})
    ids = [assert_error(r, r.status_code, r.json()["error_code"])["trace_id"] for r in responses]
    assert len(set(ids)) == len(ids), ids


async def test_traceparent_trace_id_is_echoed(server: LiveServer) -> None:
    for r in await _error_responses(server, traceparent()):
        assert r.status_code >= 400
        assert r.json()["trace_id"] == TRACE, r.text
    upper = {"traceparent": traceparent(TRACE.upper())["traceparent"].upper()}
    r = await server.client.get("/v1/tables/nope", headers=upper)
    assert r.json()["trace_id"] == TRACE


INVALID_TRACEPARENTS = [
    "garbage",
    f"00-{TRACE}",
    f"00-{TRACE[:-1]}-00f067aa0ba902b7-01",
    f"00-{TRACE}z-00f067aa0ba902b7-01",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero id is invalid
    f"00-{TRACE}-0000000000000000-01",  # all-zero parent id is invalid
    f"ff-{TRACE}-00f067aa0ba902b7-01",  # version ff is invalid
    f"00-{TRACE}-00f067aa0ba902b7-01-extra",  # version 00 has exactly four fields
]


async def test_invalid_traceparent_gets_a_new_trace_id(server: LiveServer) -> None:
    for header in INVALID_TRACEPARENTS:
        r = await server.client.get("/v1/tables/nope", headers={"traceparent": header})
        body = assert_error(r, 404, "TABLE_NOT_FOUND")
        assert body["trace_id"] not in (TRACE, "0" * 32), header
    # A later version may carry more fields; its trace id is still used.
    future = {"traceparent": f"01-{TRACE}-00f067aa0ba902b7-01-more"}
    r = await server.client.get("/v1/tables/nope", headers=future)
    assert r.json()["trace_id"] == TRACE


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as entries:
        yield entries


async def test_errors_are_logged_with_code_and_trace_id(
    server: LiveServer, logs: list[dict[str, Any]]
) -> None:
    r = await server.client.get("/v1/tables/nope", headers=traceparent())
    assert_error(r, 404, "TABLE_NOT_FOUND")
    mine = [e for e in logs if e.get("trace_id") == TRACE]
    assert mine, logs
    assert mine[-1]["error_code"] == "TABLE_NOT_FOUND"
    assert mine[-1]["status"] == 404
    assert mine[-1]["tenant_id"] == "default"
