"""The blocking client: ``Client`` and its read-your-writes ``Session``."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa

from duckmesh.client import _ops
from duckmesh.client._ops import IngestOptions, IngestResult, QueryOptions
from duckmesh.client.errors import ConnectionFailed

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")
__all__ = ["Client", "Session"]


class Client:
    """A DuckMesh server, through one keep-alive HTTP connection pool.

    ``Client("http://127.0.0.1:8080", api_key)``; usable as a context
    manager. Retryable errors (429, 5xx marked retryable, lost connections)
    are retried up to ``retries`` times with backoff, with the same
    idempotency keys."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 60.0, retries: int = 5) -> None:
        # Imported here: the server's own modules never need httpx (ADR 0020).
        import httpx

        self.retries = retries
        self._transport_error = httpx.TransportError
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def session(self) -> Session:
        """A session: its queries see its own earlier writes, without tokens by hand."""
        return Session(self)

    # -- driving operations -------------------------------------------------------

    def _send(self, call: _ops.Call) -> httpx.Response:
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = self._http.request(
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
            time.sleep(delay)

    def _run(self, op: _ops.Operation[T]) -> T:
        try:
            call = next(op)
            while True:
                call = op.send(self._send(call))
        except StopIteration as stop:
            result: T = stop.value
            return result

    # -- the API ------------------------------------------------------------------------

    def create_table(
        self,
        name: str,
        columns: Sequence[Mapping[str, Any]] | Mapping[str, str],
        *,
        primary_key: Sequence[str] | None = None,
        partition_by: Any = None,
        retention: Any = None,
    ) -> dict[str, Any]:
        """Create a table; ``columns`` as ``[{"name", "type", "nullable"}]`` or ``{name: type}``."""
        return self._run(_ops.create_table(name, columns, primary_key, partition_by, retention))

    def list_tables(self) -> list[dict[str, Any]]:
        return self._run(_ops.list_tables())

    def get_table(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self._run(_ops.get(f"/v1/tables/{_ops._name(name)}"))
        return out

    def drop_table(self, name: str) -> None:
        self._run(_ops.drop_table(name))

    def schema(self) -> dict[str, Any]:
        """``GET /v1/ui/schema``: the latest snapshot's tables, columns and sizes."""
        out: dict[str, Any] = self._run(_ops.get("/v1/ui/schema"))
        return out

    def snapshots(self, limit: int = 50) -> list[dict[str, Any]]:
        return self._run(_ops.list_snapshots(limit))

    def ingest(self, table: str, data: Any, **options: Any) -> IngestResult:
        """Write records (mappings), a ``pyarrow.Table`` or a pandas DataFrame.

        Options: ``op`` (insert, upsert, delete), ``wait`` (answer once
        visible), ``key_column``, ``idempotency_key`` (a base for the keys;
        random by default), ``event_time_column``, ``visibility_timeout_ms``."""
        return self._run(_ops.ingest(table, data, IngestOptions(**options)))

    def query(self, sql: str, **options: Any) -> pa.Table:
        """Run SQL; the result as an Arrow table (``.to_pandas()`` it if you like).

        Options: ``params``, ``min_visibility_token``, ``snapshot_id``,
        ``snapshot_time``, ``row_limit``, ``consistency_timeout_ms``.
        ``duckmesh.client.query_info(table)`` gives the snapshot and stats."""
        return self._run(_ops.query(sql, QueryOptions(**options)))

    def changes(self, table: str, from_snapshot: int, to_snapshot: int | None = None) -> pa.Table:
        """Rows inserted, upserted and deleted between two snapshots (``_dm_op``, ``_dm_token``)."""
        return self._run(_ops.changes(table, from_snapshot, to_snapshot))

    def translate(self, question: str) -> dict[str, Any]:
        """A question in words -> ``{"sql": ...}`` (never run by the server)."""
        return self._run(_ops.translate(question))


class Session:
    """Read-your-writes without tokens: every query waits for the highest
    token this session has seen (its writes and the snapshots it read)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.token = 0

    def ingest(self, table: str, data: Any, **options: Any) -> IngestResult:
        result = self.client.ingest(table, data, **options)
        self.token = max(self.token, result.max_visibility_token)
        return result

    def query(self, sql: str, **options: Any) -> pa.Table:
        table = self.client.query(sql, **_with_token(self.token, options))
        self.token = max(self.token, _ops.query_info(table).max_visibility_token)
        return table


def _with_token(token: int, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` asking for at least ``token`` when they read the latest snapshot."""
    if options.get("snapshot_id") is not None or options.get("snapshot_time") is not None:
        return options
    wanted = max(token, options.get("min_visibility_token") or 0)
    return {**options, "min_visibility_token": wanted} if wanted else options
