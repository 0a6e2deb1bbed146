"""The Python client of DuckMesh: ``Client`` (blocking) and ``AsyncClient``
(Trio or asyncio), their read-your-writes sessions, and typed errors.

    from duckmesh.client import Client
    with Client("http://127.0.0.1:8080", api_key) as dm:
        dm.ingest("events", [{"id": 1, "kind": "click"}], wait=True)
        print(dm.query("select kind, count(*) from events group by 1").to_pandas())

Results are ``pyarrow.Table``s (the server streams Arrow); writes use the
bulk formats (Arrow IPC uploads for tables and DataFrames) and carry
idempotency keys, so retried requests never write a row twice.
"""

from duckmesh.client import errors
from duckmesh.client._async import AsyncClient, AsyncSession
from duckmesh.client._ops import IngestResult, QueryInfo, query_info
from duckmesh.client._sync import Client, Session
from duckmesh.client.errors import ApiError, ClientError, ConnectionFailed

__all__ = [
    "ApiError",
    "AsyncClient",
    "AsyncSession",
    "Client",
    "ClientError",
    "ConnectionFailed",
    "IngestResult",
    "QueryInfo",
    "Session",
    "errors",
    "query_info",
]
