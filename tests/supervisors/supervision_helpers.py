"""Small actors for the supervision tests: each records what happened to it, with the time.

Tests assert on the recorded order and times instead of sleeping to synchronise.
"""

from __future__ import annotations

import trio

from duckmesh.supervisors import Actor, RestartPolicy

Event = tuple[str, str, float]  # (actor, what, trio.current_time())


class Journal:
    """An append-only record of (actor, what, when) shared by the actors of one test."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def note(self, actor: str, what: str) -> None:
        self.events.append((actor, what, trio.current_time()))

    def of(self, actor: str, what: str | None = None) -> list[Event]:
        return [e for e in self.events if e[0] == actor and (what is None or e[1] == what)]

    def times(self, actor: str, what: str) -> list[float]:
        return [t for _, _, t in self.of(actor, what)]

    def sequence(self) -> list[tuple[str, str]]:
        return [(a, w) for a, w, _ in self.events]


def fast_policy(**overrides: object) -> RestartPolicy:
    """A deterministic policy: no jitter, 1 s initial backoff, generous intensity."""
    settings: dict[str, object] = {
        "backoff_initial": 1.0,
        "backoff_max": 60.0,
        "backoff_jitter": 0.0,
        "max_restarts": 10,
        "within_seconds": 1000.0,
    }
    settings.update(overrides)
    return RestartPolicy(**settings)  # type: ignore[arg-type]


class Steady(Actor):
    """Starts, then waits for stop_requested and returns. Records cancellation if cut off."""

    def __init__(self, name: str, journal: Journal) -> None:
        super().__init__(name)
        self.journal = journal

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.journal.note(self.name, "start")
        try:
            task_status.started()
            await self.stop_requested.wait()
            self.journal.note(self.name, "stop")
        except trio.Cancelled:
            self.journal.note(self.name, "cancelled")
            raise


class Crashing(Actor):
    """Starts, then crashes on its first ``crashes`` runs; afterwards behaves like Steady.

    ``before_start`` makes it crash before reporting started; ``crash_after`` is how long (mock
    time) it runs before crashing. ``crashes=None`` crashes forever.
    """

    def __init__(
        self,
        name: str,
        journal: Journal,
        *,
        crashes: int | None = 1,
        before_start: bool = False,
        crash_after: float = 0.0,
    ) -> None:
        super().__init__(name)
        self.journal = journal
        self.crashes = crashes
        self.before_start = before_start
        self.crash_after = crash_after
        self.runs = 0
        self.crashed = trio.Event()
        self.settled = trio.Event()  # set once it has started and will no longer crash

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        self.journal.note(self.name, "start")
        will_crash = self.crashes is None or self.runs <= self.crashes
        try:
            if will_crash:
                if not self.before_start:
                    task_status.started()
                await trio.sleep(self.crash_after)
                self.journal.note(self.name, "crash")
                self.crashed.set()
                raise RuntimeError(f"boom {self.runs}")
            task_status.started()
            self.settled.set()
            await self.stop_requested.wait()
            self.journal.note(self.name, "stop")
        except trio.Cancelled:
            self.journal.note(self.name, "cancelled")
            raise


class Stubborn(Actor):
    """Ignores stop_requested; only cancellation ends it."""

    def __init__(self, name: str, journal: Journal) -> None:
        super().__init__(name)
        self.journal = journal

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.journal.note(self.name, "start")
        task_status.started()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.journal.note(self.name, "cancelled")
            raise
