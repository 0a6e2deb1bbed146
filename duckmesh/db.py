"""Postgres access for Trio code: sync psycopg connections run in worker threads.

ADR 0002 explains the choice (measured faster here than psycopg's async API
through trio-asyncio). One call of :meth:`Database.run` is one thread hop that
runs a whole function — usually a whole transaction — on a pooled
connection, so the hot paths pay one hop per transaction, not per statement.
Cancellation never abandons a thread mid-transaction: the call finishes or
rolls back first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
import trio

T = TypeVar("T")
Conn = psycopg.Connection[Any]


def connect(dsn: str) -> Conn:
    conn: Conn = psycopg.connect(dsn, autocommit=True)
    # Timestamps load in UTC whatever the server's default: in another zone the
    # valid instant 0001-01-01T00:00Z is year 0 there and fails to load.
    conn.execute("SET TIME ZONE 'UTC'")
    return conn


class Database:
    """A bounded pool of autocommit connections for use from Trio and threads."""

    def __init__(self, dsn: str, size: int = 8) -> None:
        self.dsn = dsn
        self.size = size
        self._idle: list[Conn] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)
        self._trio_slots = trio.CapacityLimiter(size)
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        """Borrow a connection from a worker thread or synchronous code."""
        self._slots.acquire()
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                conn = connect(self.dsn)
            try:
                yield conn
            except BaseException:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.close()
                raise
            finally:
                if not conn.closed and not conn.broken and not self._closed:
                    with self._lock:
                        self._idle.append(conn)
                else:
                    conn.close()
        finally:
            self._slots.release()

    def call(self, fn: Callable[[Conn], T], *, transaction: bool = True) -> T:
        """Run ``fn(conn)`` synchronously, inside one transaction by default."""
        with self.connection() as conn:
            if not transaction:
                return fn(conn)
            with conn.transaction():
                return fn(conn)

    async def run(self, fn: Callable[[Conn], T], *, transaction: bool = True) -> T:
        """Run ``fn(conn)`` in a worker thread; one hop for the whole function."""
        async with self._trio_slots:
            return await trio.to_thread.run_sync(
                lambda: self.call(fn, transaction=transaction), abandon_on_cancel=False
            )

    def close(self) -> None:
        self._closed = True
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
