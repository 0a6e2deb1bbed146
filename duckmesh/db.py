"""Postgres access for Trio code: sync psycopg connections run in worker threads.

ADR 0002 explains the choice (measured faster here than psycopg's async API
through trio-asyncio); ADR 0011 the pool (``psycopg_pool.ConnectionPool``:
checks on checkout, a checkout timeout, statistics); ADR 0023 why the
checkout check costs a round trip only when the socket has something to say.

There is one way to use a connection: :meth:`Database.call` runs a whole
function — usually a whole transaction — on a pooled connection. Trio code
reaches it through :meth:`Database.run` (one thread hop for that function)
or, for a synchronous routine that calls ``call`` itself (the bus, the
committer, maintenance jobs), :meth:`Database.in_thread`; both take the
database's Trio-side limiter, so at most ``size`` Trio worker threads wait on
the pool and the rest wait cheaply, cancellably, in Trio. Cancellation never
abandons a thread mid-transaction: the call finishes or rolls back first.
"""

from __future__ import annotations

import contextlib
import functools
import select
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import trio
from psycopg_pool import ConnectionPool, PoolTimeout

from duckmesh import metrics
from duckmesh.errors import DuckMeshError

T = TypeVar("T")
Conn = psycopg.Connection[Any]

DEFAULT_POOL_TIMEOUT_S = 10.0


def configure(conn: Conn) -> None:
    """Per-connection setup, run once when the pool opens a connection."""
    # Timestamps load in UTC whatever the server's default: in another zone the
    # valid instant 0001-01-01T00:00Z is year 0 there and fails to load.
    conn.execute("SET TIME ZONE 'UTC'")


def check_at_checkout(conn: Conn) -> None:
    """The pool's checkout check, a round trip only when it can find something.

    An idle connection's socket has nothing to read unless the server spoke:
    a terminated backend (``pg_terminate_backend``, a Postgres shutdown or
    restart, a backend exiting after its postmaster died) sends its FATAL
    error and closes the socket, which makes it readable. So a socket with
    nothing to read is handed out as it is (saving one round trip per
    catalog call), and a readable or unusable one gets the full check,
    which raises on a dead connection so the pool replaces it. A peer that
    vanished without closing (a network partition) is not detected here,
    nor by the round trip before its TCP timeout."""
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.Error):  # closed or unusable: let the check say
        readable = [True]
    if readable:
        ConnectionPool.check_connection(conn)


def _pipelined(conn: Conn, fn: Callable[[Conn], T], transaction: bool) -> T:
    """``fn(conn)`` in pipeline mode, in one transaction if ``transaction``.

    BEGIN and COMMIT are queued like any statement (psycopg's ``transaction()``
    waits for a sync on entry and two on exit); leaving the pipeline waits
    for every result and raises the first error, COMMIT's included, so the
    transaction is durable when this returns. On any error the connection
    rolls back before it goes back to the pool."""
    try:
        with conn.pipeline():
            if transaction:
                conn.execute("BEGIN")
            result = fn(conn)
            if transaction:
                conn.execute("COMMIT")
    except BaseException:
        # A no-op unless a transaction is still open; on a broken connection
        # it fails too (the pool then drops it): keep the first error.
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        raise
    return result


def connect(dsn: str) -> Conn:
    """One unpooled autocommit connection set up like the pool's."""
    conn: Conn = psycopg.connect(dsn, autocommit=True)
    configure(conn)
    return conn


class Database:
    """A bounded pool of autocommit connections for use from Trio and threads.

    ``size`` is both the pool's maximum and the Trio limiter's tokens
    (``DUCKMESH_DB_POOL_SIZE``). Connections open on demand. A checkout that
    waits longer than ``timeout_s`` raises the retryable ``OVERLOADED`` error.
    The DSN is used as given (an embedded server's carries its password).
    """

    def __init__(
        self,
        dsn: str,
        size: int = 8,
        *,
        timeout_s: float = DEFAULT_POOL_TIMEOUT_S,
        name: str = "catalog",
    ) -> None:
        self.dsn = dsn
        self.size = size
        self.name = name
        self.timeout_s = timeout_s
        self.limiter = trio.CapacityLimiter(size)
        self.pool = ConnectionPool(
            dsn,
            min_size=0,
            max_size=size,
            kwargs={"autocommit": True},
            configure=configure,
            check=check_at_checkout,
            timeout=timeout_s,
            name=name,
            open=True,
        )
        metrics.DB_POOLS.track(self)

    def call(
        self, fn: Callable[[Conn], T], *, transaction: bool = True, pipeline: bool = False
    ) -> T:
        """Run ``fn(conn)`` synchronously, inside one transaction by default.

        ``pipeline=True`` runs it in psycopg's pipeline mode: statements are
        sent without waiting, and the connection waits only where ``fn``
        fetches a result and at the commit, so a transaction of N statements
        that reads k results costs about k + 1 round trips, not N + 2. In a
        pipeline ``fn`` must not read a cursor's ``rowcount`` before fetching
        from it (it is not known yet)."""
        try:
            with self.pool.connection() as conn:
                if pipeline:
                    return _pipelined(conn, fn, transaction)
                if not transaction:
                    return fn(conn)
                with conn.transaction():
                    return fn(conn)
        except PoolTimeout as exc:
            raise DuckMeshError(
                "OVERLOADED",
                f"no catalog connection became free within {self.timeout_s:g} s; retry",
                pool=self.name,
                pool_size=self.size,
            ) from exc

    async def run(self, fn: Callable[[Conn], T], *, transaction: bool = True) -> T:
        """Run ``fn(conn)`` in a worker thread; one hop for the whole function."""
        return await self.in_thread(functools.partial(self.call, fn, transaction=transaction))

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a synchronous routine that uses :meth:`call` in a worker thread,
        under this database's limiter; it is never abandoned on cancellation."""
        return await trio.to_thread.run_sync(
            fn, *args, limiter=self.limiter, abandon_on_cancel=False
        )

    def stats(self) -> dict[str, int]:
        """The pool's counters and gauges (``ConnectionPool.get_stats``)."""
        return self.pool.get_stats()

    def close(self) -> None:
        metrics.DB_POOLS.untrack(self)
        self.pool.close()
