"""The lease heartbeat of a running commit."""

from __future__ import annotations

import threading
from concurrent.futures import Executor, Future

import structlog

from duckmesh.bus import Batch, IngestBus, LeaseLost

log = structlog.get_logger("duckmesh.coordinator")


class LeaseHeartbeat:
    """Renews a batch's lease every third of its length while a commit runs,
    so a slow commit (a big batch, a slow disk) is not taken over half-way.
    A lost lease is only noted: fencing makes the publish fail anyway."""

    def __init__(self, bus: IngestBus, batch: Batch, lease_s: float, workers: Executor) -> None:
        self.bus = bus
        self.batch = batch
        self.lease_s = lease_s
        self.renewals = 0
        # The committer's long-lived workers: starting a thread per commit
        # waits for it to be scheduled (milliseconds on a busy host).
        self._workers = workers
        self._stop = threading.Event()
        self._running: Future[None] | None = None

    def __enter__(self) -> LeaseHeartbeat:
        self._running = self._workers.submit(self._run)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._running is not None:
            self._running.result()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.bus.extend_lease(self.batch, self.lease_s)
                self.renewals += 1
            except LeaseLost:
                log.warning("lease lost during a commit", tenant_id=self.batch.scope)
                return
            except Exception:  # the database hiccuped: try again next beat
                log.exception("lease renewal failed", tenant_id=self.batch.scope)
