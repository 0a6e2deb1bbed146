"""The async client (Trio or asyncio, through httpx and anyio): ``AsyncClient``
and its read-your-writes ``AsyncSession``; the same operations as ``Client``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa

from duckmesh.client import _ops
from duckmesh.client._ops import IngestOptions, IngestResult, QueryOptions
from duckmesh.client._sync import _with_token
from duckmesh.client.errors import ConnectionFailed

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")
__all__ = ["AsyncClient", "AsyncSession"]


class AsyncClient:
    """``async with AsyncClient(url, api_key) as client: await client.query(...)``."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 60.0, retries: int = 5) -> None:
        # Imported here: the server's own modules never need httpx (ADR 0020).
        import anyio
        import httpx

        self.retries = retries
        self._transport_error = httpx.TransportError
        self._sleep = anyio.sleep  # Trio or asyncio, whichever runs us
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def session(self) -> AsyncSession:
        return AsyncSession(self)

    async def _send(self, call: _ops.Call) -> httpx.Response:
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    content=call.body,
                    params=call.params,
                    headers=call.headers,
                )
            except self._transport_error as exc:
                failure: Exception = exc
            delay = _ops.retry_delay(call, attempt, self.retries, response)
            if delay is None:
                if response is None:
                    raise ConnectionFailed(f"{call.method} {call.path}: {failure}") from failure
                return _ops.raise_for_error(response)
            attempt += 1
            await self._sleep(delay)

    async def _run(self, op: _ops.Operation[T]) -> T:
        try:
            call = next(op)
            while True:
                call = op.send(await self._send(call))
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def create_table(
        self,
        name: str,
        columns: Sequence[Mapping[str, Any]] | Mapping[str, str],
        *,
        primary_key: Sequence[str] | None = None,
        partition_by: Any = None,
        retention: Any = None,
    ) -> dict[str, Any]:
        return await self._run(
            _ops.create_table(name, columns, primary_key, partition_by, retention)
        )

    async def list_tables(self) -> list[dict[str, Any]]:
        return await self._run(_ops.list_tables())

    async def get_table(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = await self._run(_ops.get(f"/v1/tables/{_ops._name(name)}"))
        return out

    async def drop_table(self, name: str) -> None:
        await self._run(_ops.drop_table(name))

    async def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = await self._run(_ops.get("/v1/ui/schema"))
        return out

    async def snapshots(self, limit: int = 50) -> list[dict[str, Any]]:
        return await self._run(_ops.list_snapshots(limit))

    async def ingest(self, table: str, data: Any, **options: Any) -> IngestResult:
        return await self._run(_ops.ingest(table, data, IngestOptions(**options)))

    async def query(self, sql: str, **options: Any) -> pa.Table:
        return await self._run(_ops.query(sql, QueryOptions(**options)))

    async def changes(
        self, table: str, from_snapshot: int, to_snapshot: int | None = None
    ) -> pa.Table:
        return await self._run(_ops.changes(table, from_snapshot, to_snapshot))

    async def translate(self, question: str) -> dict[str, Any]:
        return await self._run(_ops.translate(question))


class AsyncSession:
    """``Session`` for ``AsyncClient``."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.token = 0

    async def ingest(self, table: str, data: Any, **options: Any) -> IngestResult:
        result = await self.client.ingest(table, data, **options)
        self.token = max(self.token, result.max_visibility_token)
        return result

    async def query(self, sql: str, **options: Any) -> pa.Table:
        table = await self.client.query(sql, **_with_token(self.token, options))
        self.token = max(self.token, _ops.query_info(table).max_visibility_token)
        return table
