"""The coordinator actor: runs commit cycles, woken by new-records notices.

After a wake-up it lingers ``commit_linger_ms`` so that records arriving
together share one snapshot, then commits until no scope has pending
records. Without notices it polls every ``flush_interval_ms``. All state
lives in Postgres, so a restart simply resumes (SPEC §2.4).

The cadence adapts to load (ADR 0015): while commits keep finding records,
they start at most once per ``commit_busy_interval_ms`` (``Cadence``), so a
busy tenant gets fewer, larger snapshots and the coordinator less CPU per
record; a record waits at most about one interval plus one commit.
"""

from __future__ import annotations

import time

import attrs
import trio

from duckmesh import metrics
from duckmesh.coordinator.committer import CommitOutcome, Committer
from duckmesh.notify import Notifications
from duckmesh.supervisors import Actor

# Pacing starts with the third commit in a row that finds records: a burst of
# writes (or a client waiting on each write) keeps ADR 0007's cadence.
BUSY_STREAK = 3
# A tenant committed within this long counts as busy (shares the pause).
BUSY_WINDOW_S = 1.0


@attrs.define
class Cadence:
    """When the next commit starts, from what the last ones did."""

    linger_s: float
    busy_interval_s: float
    _busy: dict[str, float] = attrs.field(factory=dict)  # tenant -> when last committed

    def busy_pause(
        self, outcome: CommitOutcome, duration_s: float, batch_max: int, now: float
    ) -> float:
        """The pause before the next commit after ``outcome`` took ``duration_s``:
        what is left of ``busy_interval_s`` since that commit started.

        Each commit serves one tenant: with several busy tenants the pause is
        split between them, so a tenant's own cadence grows by one pause per
        round of commits, not by one per busy tenant."""
        if outcome.snapshot_id is None or self.busy_interval_s <= 0:
            return 0.0  # given back (others go on), or adaptation off
        if outcome.records + outcome.quarantined >= batch_max:
            return 0.0  # a full batch: a backlog to catch up with, not a pace to keep
        self._busy[outcome.tenant_id] = now
        for tenant, at in list(self._busy.items()):
            if now - at > BUSY_WINDOW_S:
                del self._busy[tenant]
        return max(0.0, self.busy_interval_s - duration_s) / len(self._busy)


class CoordinatorActor(Actor):
    def __init__(
        self,
        name: str,
        committer: Committer,
        notifications: Notifications,
        *,
        flush_interval_s: float,
        linger_s: float,
        busy_interval_s: float = 0.0,
    ) -> None:
        super().__init__(name)
        self.committer = committer
        self.notifications = notifications
        self.flush_interval_s = flush_interval_s
        self.cadence = Cadence(linger_s, busy_interval_s)
        self.commits = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        batch_max = self.committer.settings.batch_max_records
        streak = 0  # commits in a row that found records, with no quiet wait between
        try:
            while not self.stop_requested.is_set():
                seen = self.notifications.records.seq
                started = time.monotonic()
                outcome = await trio.to_thread.run_sync(
                    self.committer.commit_once, abandon_on_cancel=False
                )
                if outcome is not None:
                    self.commits += outcome.snapshot_id is not None
                    now = time.monotonic()
                    streak = streak + 1 if outcome.snapshot_id is not None else 0
                    if streak >= BUSY_STREAK:  # a short burst is committed as before
                        pause = self.cadence.busy_pause(outcome, now - started, batch_max, now)
                        with trio.move_on_after(pause):
                            await self.stop_requested.wait()
                        metrics.COMMIT_PHASE.labels(phase="pace").observe(pause)
                    continue
                streak = 0
                await self.notifications.records.wait(seen, self.flush_interval_s)
                if self.cadence.linger_s:
                    await trio.sleep(self.cadence.linger_s)
                    metrics.COMMIT_PHASE.labels(phase="linger").observe(self.cadence.linger_s)
        finally:
            with trio.move_on_after(2) as scope:
                scope.shield = True
                await trio.to_thread.run_sync(
                    self.committer.bus.release, self.committer.consumer_id
                )
