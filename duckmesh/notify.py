"""LISTEN/NOTIFY wake-ups for Trio code, with polling as the fallback.

One listener thread per process holds a dedicated connection LISTENing on
the records, snapshots and events channels and hands each notification to
Trio. Waiters never rely on a notification alone: every wait is bounded and
re-checks the catalog, so a lost notification costs latency, not
correctness.
"""

from __future__ import annotations

from collections.abc import Callable
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
    notice that lands between a check and the wait is never missed."""

    def __init__(self) -> None:
        self.seq = 0
        self._event = trio.Event()

    def fire(self) -> None:
        self.seq += 1
        self._event.set()
        self._event = trio.Event()

    async def wait(self, since: int, timeout: float) -> None:  # noqa: ASYNC109
        if self.seq != since:
            return
        with trio.move_on_after(timeout):
            await self._event.wait()


class Notifications:
    """Fan-out of catalog notifications to Trio waiters and callbacks."""

    def __init__(self) -> None:
        self.watermarks: dict[str, tuple[int, int]] = {}  # tenant -> (snapshot, watermark)
        self.records = Signal()
        self._snapshots: dict[str, Signal] = {}
        self._event_callbacks: list[Callable[[str], None]] = []
        self.received = 0

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

    def dispatch_all(self, notes: list[tuple[str, str]]) -> None:
        for channel, payload in notes:
            self.dispatch(channel, payload)

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
                    notes = [(n.channel, n.payload) for n in burst]
                    trio.from_thread.run_sync(self.dispatch_all, notes, trio_token=token)

        async with trio.open_nursery() as nursery:

            async def run_loop() -> None:
                await trio.to_thread.run_sync(loop, abandon_on_cancel=True)

            nursery.start_soon(run_loop)
            await ready.wait()
            task_status.started()
