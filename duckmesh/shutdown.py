"""Bounded shutdown of one serving process (ADR 0017).

Why it exists: a graceful stop used to wait for the longest running query
(up to the query timeout), and requests on kept-open connections after the
signal hung until the process was gone. What it guarantees, from the stop
signal on:

- every request that arrives is answered 503 ``SHUTTING_DOWN`` (retryable)
  with ``Connection: close`` (health and metrics still answer), so a client
  or load balancer moves on at once instead of waiting;
- running queries get ``DUCKMESH_SHUTDOWN_GRACE_MS`` to finish; the grace
  ends early once none is running; then they are interrupted (again every
  ``INTERRUPT_REPEAT_S``: an interrupt landing between two steps of DuckDB
  can be lost) and answered 503 ``SHUTTING_DOWN``;
- only then is the supervision tree stopped: Hypercorn closes the idle
  keep-alive connections and gives in-flight responses its own short grace.
"""

from __future__ import annotations

from typing import Protocol

import structlog
import trio

log = structlog.get_logger("duckmesh.shutdown")

POLL_S = 0.05
INTERRUPT_REPEAT_S = 0.2
# Paths that keep answering during the shutdown: liveness and the scrape.
STILL_SERVED = frozenset({"/v1/health", "/v1/metrics"})


class StoppableQueries(Protocol):
    def running(self) -> int: ...

    def stop(self) -> None: ...


class ShutdownState:
    """Whether this process got a stop signal (the app's request hook reads it)."""

    def __init__(self) -> None:
        self.signalled = False

    def begin(self) -> None:
        self.signalled = True

    def refuses(self, path: str) -> bool:
        """Whether a request for ``path`` is answered SHUTTING_DOWN."""
        return self.signalled and path not in STILL_SERVED


async def drain_queries(queries: StoppableQueries, grace_s: float) -> None:
    """Give running queries ``grace_s`` (less once none runs), then interrupt them."""
    with trio.move_on_after(grace_s):
        while queries.running():
            await trio.sleep(POLL_S)
    left = queries.running()
    if left:
        log.warning("interrupting queries still running after the grace", queries=left)
    queries.stop()


async def keep_interrupting(queries: StoppableQueries) -> None:
    """Repeat the interrupt until no query runs (cancelled with the process)."""
    while queries.running():
        await trio.sleep(INTERRUPT_REPEAT_S)
        queries.stop()
