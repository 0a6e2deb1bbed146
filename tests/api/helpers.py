"""Helpers shared by the API tests: keys, tenants, error-body checks, polling."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import trio

from duckmesh.catalog import commands
from duckmesh.errors import ERROR_CODES, ErrorCode
from duckmesh.runtime import Runtime

ERROR_KEYS = {"error_code", "message", "retryable", "context", "trace_id"}
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


async def issue_key(rt: Runtime, tenant: str, roles: list[str]) -> tuple[str, str]:
    """(key_id, plaintext) of a new key of ``tenant`` holding ``roles``."""
    return await rt.db.run(lambda c: commands.issue_key(c, tenant, roles, actor="test"))


async def create_tenant(rt: Runtime, tenant: str) -> None:
    await rt.db.run(lambda c: commands.create_tenant(c, tenant, actor="test"))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(r: httpx.Response, status: int, code: ErrorCode) -> dict[str, Any]:
    """``r`` is an error response with the spec's body, ``status`` and ``code``."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body: dict[str, Any] = r.json()
    assert set(body) == ERROR_KEYS, body
    assert body["error_code"] == code, body
    assert ERROR_CODES[code] == (status, body["retryable"]), body
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["context"], dict)
    assert isinstance(body["trace_id"], str), body
    assert TRACE_ID.match(body["trace_id"]), body
    return body


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 5.0, interval: float = 0.05
) -> None:
    """Await until ``check()`` is true (a condition, bounded by ``timeout``)."""
    with trio.fail_after(timeout):
        while not await check():
            await trio.sleep(interval)
