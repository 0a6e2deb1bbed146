"""A query's slots outlive its answer: they are freed when its worker thread
ends, not when the caller stops waiting, so abandoned work cannot pile up."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

import trio

from duckmesh.errors import DuckMeshError

T = TypeVar("T")


class Handover:
    """Releases a query's slots exactly once: when its thread ends, or at once
    if the thread never started (cancelled before it ran)."""

    def __init__(self, slots: contextlib.ExitStack, token: trio.lowlevel.TrioToken) -> None:
        self._slots = slots
        self._token = token
        self._lock = threading.Lock()
        self._state = "new"  # -> "running" (the thread releases) or "abandoned"

    def run(self, work: Callable[[], T]) -> T:
        with self._lock:
            if self._state == "abandoned":  # nobody waits for this answer any more
                raise DuckMeshError("QUERY_TIMEOUT", "the query was abandoned before it ran")
            self._state = "running"
        try:
            return work()
        finally:
            # Queued, not awaited: the answer does not wait for a round trip
            # through the Trio loop (the slots are freed a moment later).
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._slots.close)

    def abandon(self) -> None:
        """Called in Trio when the caller stops waiting (answer, error or cancel)."""
        with self._lock:
            if self._state != "new":
                return
            self._state = "abandoned"
        self._slots.close()
