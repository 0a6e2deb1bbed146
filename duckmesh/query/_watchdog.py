"""One shared timer thread that interrupts queries running past their deadline.

Why it exists: every sandboxed query needs a time limit, and starting a
``threading.Timer`` thread per query costs more than a small query itself.

What it guarantees: after ``WATCHDOG.arm(delay_s, callback)`` the callback is
called from the watchdog thread once ``delay_s`` has passed, and then again
every ``repeat_s`` (an interrupt that lands between two steps of a query can be
lost, so it is repeated) until the alarm is disarmed. Once ``Alarm.disarm()``
has returned the callback never runs again, so the caller may close what the
callback touches. Callback exceptions are swallowed.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable


def _nothing() -> None:
    return None


class Alarm:
    """A pending deadline; ``fired`` tells whether the callback ever ran."""

    __slots__ = ("_callback", "_lock", "active", "fired", "repeat_s")

    def __init__(self, callback: Callable[[], object], repeat_s: float) -> None:
        self._callback = callback
        self._lock = threading.Lock()
        self.active = True
        self.fired = False
        self.repeat_s = repeat_s

    def fire(self) -> bool:
        """Run the callback unless disarmed; return whether it should repeat."""
        with self._lock:
            if not self.active:
                return False
            self.fired = True
            with contextlib.suppress(Exception):
                self._callback()
            return True

    def disarm(self) -> bool:
        """Stop the alarm; return whether the callback had fired."""
        with self._lock:
            self.active = False
            # The entry waits in the heap until its deadline: hold no cursor.
            self._callback = _nothing
            return self.fired


class Watchdog:
    """A heap of deadlines served by a single daemon thread, started lazily."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, Alarm]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, delay_s: float, callback: Callable[[], object], repeat_s: float = 0.2) -> Alarm:
        alarm = Alarm(callback, repeat_s)
        with self._cv:
            entry = (time.monotonic() + delay_s, next(self._seq), alarm)
            heapq.heappush(self._heap, entry)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="duckmesh-query-watchdog", daemon=True
                )
                self._thread.start()
            # The thread sleeps until the earliest deadline; it needs waking
            # only when this one is earlier. With one timeout for every query
            # (the usual case) a new alarm never is, so a query does not wake
            # the thread (a context switch and a GIL hand-over per query).
            if self._heap[0] is entry:
                self._cv.notify()
        return alarm

    def _next_due(self) -> Alarm:
        with self._cv:
            while True:
                while self._heap and not self._heap[0][2].active:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cv.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait <= 0:
                    return heapq.heappop(self._heap)[2]
                self._cv.wait(wait)

    def _run(self) -> None:
        while True:
            alarm = self._next_due()
            if alarm.fire():
                with self._cv:
                    due = time.monotonic() + alarm.repeat_s
                    heapq.heappush(self._heap, (due, next(self._seq), alarm))


WATCHDOG = Watchdog()
