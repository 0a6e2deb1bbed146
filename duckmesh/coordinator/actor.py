"""The coordinator actor: runs commit cycles, woken by new-record notices.

After a wake-up it lingers ``commit_linger_ms`` so that records arriving
together share one snapshot, then commits until no scope has pending
records. Without notices it polls every ``flush_interval_ms``. All state
lives in Postgres, so a restart simply resumes (SPEC §2.4).
"""

from __future__ import annotations

import trio

from duckmesh.coordinator.committer import Committer
from duckmesh.notify import Notifications
from duckmesh.supervisors import Actor


class CoordinatorActor(Actor):
    def __init__(
        self,
        name: str,
        committer: Committer,
        notifications: Notifications,
        *,
        flush_interval_s: float,
        linger_s: float,
    ) -> None:
        super().__init__(name)
        self.committer = committer
        self.notifications = notifications
        self.flush_interval_s = flush_interval_s
        self.linger_s = linger_s
        self.commits = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while not self.stop_requested.is_set():
                seen = self.notifications.records.seq
                outcome = await trio.to_thread.run_sync(
                    self.committer.commit_once, abandon_on_cancel=False
                )
                if outcome is not None:
                    # Given back (snapshot_id None): the scope backs off, others go on.
                    self.commits += outcome.snapshot_id is not None
                    continue
                await self.notifications.records.wait(seen, self.flush_interval_s)
                if self.linger_s:
                    await trio.sleep(self.linger_s)
        finally:
            with trio.move_on_after(2) as scope:
                scope.shield = True
                await trio.to_thread.run_sync(
                    self.committer.bus.release, self.committer.consumer_id
                )
