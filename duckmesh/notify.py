"""LISTEN/NOTIFY wake-ups for Trio code, with polling as the fallback.

One listener thread per process holds a dedicated connection LISTENing on
the records, snapshots and events channels and hands each notification to
Trio. Waiters never rely on a notification alone: every wait is bounded and
re-checks the catalog, so a lost notification costs latency, not
correctness.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import psycopg
import structlog
import trio

from duckmesh.bus.postgres import RECORDS_CHANNEL
from duckmesh.catalog.commands import SNAPSHOTS_CHANNEL
from duckmesh.events import EVENTS_CHANNEL

log = structlog.get_logger("duckmesh.notify")

CHANNELS = (RECORDS_CHANNEL, SNAPSHOTS_CHANNEL, EVENTS_CHANNEL)
# Only coordinators wait for new records; every group commit notifies, so a
# process without one skips the channel (a thread hop per publish saved).
NO_RECORDS = (SNAPSHOTS_CHANNEL, EVENTS_CHANNEL)
DRAIN_S = 0.001  # after a notice, how long to gather the rest of its burst
MAX_BURST = 1000


class Signal:
    """A counter with a wake-up: waiters pass the count they saw, so a
    notice that lands between a check and the wait is never missed.

    ``note`` counts a notice from any thread and says whether a Trio task is
    waiting: the listener hands a notice to Trio only then (a busy
    coordinator gets one new-records notice per group commit and reads none
    of them: it commits again as soon as a commit found records)."""

    def __init__(self) -> None:
        self.seq = 0
        self._event = trio.Event()
        self._lock = threading.Lock()
        self._waiters = 0

    def fire(self) -> None:
        """Count a notice and wake the waiters (Trio thread)."""
        self.note()
        self.wake()

    def note(self, count: int = 1) -> bool:
        """Count ``count`` notices (any thread); whether a waiter needs ``wake``."""
        with self._lock:
            self.seq += count
            return self._waiters > 0

    def wake(self) -> None:
        """Wake the current waiters (Trio thread)."""
        self._event.set()
        self._event = trio.Event()

    async def wait(self, since: int, timeout: float) -> None:  # noqa: ASYNC109
        with self._lock:
            if self.seq != since:
                return
            # From here a note() reports a waiter and the listener hops to
            # wake it; no checkpoint comes before the wait on this event.
            self._waiters += 1
        try:
            with trio.move_on_after(timeout):
                await self._event.wait()
        finally:
            with self._lock:
                self._waiters -= 1


class Notifications:
    """Fan-out of catalog notifications to Trio waiters and callbacks."""

    def __init__(self) -> None:
        self.watermarks: dict[str, tuple[int, int]] = {}  # tenant -> (snapshot, watermark)
        self.records = Signal()
        self._snapshots: dict[str, Signal] = {}
        self._event_callbacks: list[Callable[[str], None]] = []
        self.received = 0  # notices dispatched in Trio (new-records ones: only woken waiters)
        self.hops = 0  # bursts of notices the listener handed to Trio

    # -- dispatch (Trio thread) -------------------------------------------

    def dispatch(self, channel: str, payload: str) -> None:
        self.received += 1
        if channel == RECORDS_CHANNEL:
            self.records.fire()
        elif channel == SNAPSHOTS_CHANNEL:
            tenant, snapshot, watermark = payload.rsplit(":", 2)
            self.note_snapshot(tenant, int(snapshot), int(watermark))
        elif channel == EVENTS_CHANNEL:
            for callback in self._event_callbacks:
                callback(payload)

    def dispatch_all(self, notes: list[tuple[str, str]], *, wake_records: bool = False) -> None:
        self.hops += 1
        for channel, payload in notes:
            self.dispatch(channel, payload)
        if wake_records:
            self.records.wake()

    def note_snapshot(self, tenant: str, snapshot_id: int, watermark: int) -> None:
        known = self.watermarks.get(tenant)
        if known is None or snapshot_id > known[0]:
            self.watermarks[tenant] = (snapshot_id, watermark)
        self.snapshots(tenant).fire()

    def snapshots(self, tenant: str) -> Signal:
        signal = self._snapshots.get(tenant)
        if signal is None:
            signal = self._snapshots[tenant] = Signal()
        return signal

    def on_event(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(stream)`` for every appended catalog event."""
        self._event_callbacks.append(callback)

    # -- the listener ------------------------------------------------------

    async def listen(
        self,
        dsn: str,
        *,
        stop: trio.Event,
        channels: tuple[str, ...] = CHANNELS,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the LISTEN loop on ``channels`` in a worker thread until ``stop`` is set."""
        token = trio.lowlevel.current_trio_token()
        ready = trio.Event()

        def loop() -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                for channel in channels:
                    conn.execute(f"LISTEN {channel}")
                trio.from_thread.run_sync(ready.set, trio_token=token)
                while not stop.is_set():
                    first = list(conn.notifies(timeout=0.5, stop_after=1))
                    if not first:
                        continue
                    # Under load notices come in bursts (one per group commit):
                    # take what else arrived and hand them to Trio in one hop.
                    burst = first + list(conn.notifies(timeout=DRAIN_S, stop_after=MAX_BURST))
                    # New-records notices are counted here; Trio hears of
                    # them only when a coordinator waits for one.
                    notes = [(n.channel, n.payload) for n in burst if n.channel != RECORDS_CHANNEL]
                    records = len(burst) - len(notes)
                    wake = records > 0 and self.records.note(records)
                    if notes or wake:
                        dispatch = partial(self.dispatch_all, notes, wake_records=wake)
                        trio.from_thread.run_sync(dispatch, trio_token=token)

        async with trio.open_nursery() as nursery:

            async def run_loop() -> None:
                await trio.to_thread.run_sync(loop, abandon_on_cancel=True)

            nursery.start_soon(run_loop)
            await ready.wait()
            task_status.started()
