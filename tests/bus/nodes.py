"""A second API node on the same catalog, for races between processes' ingest paths.

One API process serialises a tenant's publishes in its group committer (one
flush in flight per tenant), which would hide a token scheme that is only
safe within one process. A second node — its own runtime, connection pool
and group committer, role ``api`` — publishes for the same tenant in parallel,
exactly as two API replicas would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from duckmesh.config import Config
from duckmesh.runtime import build_runtime
from tests.fixtures import LiveServer, start_server


@asynccontextmanager
async def second_api_node(
    make_config: Callable[..., Config], dsn: str
) -> AsyncIterator[LiveServer]:
    rt = build_runtime(make_config(role="api"), dsn=dsn)
    try:
        async with trio.open_nursery() as nursery:
            node = await start_server(rt, nursery)
            try:
                yield node
            finally:
                await node.client.aclose()
                root = rt.root
                if root is not None:
                    with trio.move_on_after(15):
                        await root.stop()
                nursery.cancel_scope.cancel()
    finally:
        rt.close()
