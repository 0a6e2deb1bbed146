"""Stopping: graceful stop with a grace period, and cancellation that is never a failure."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from supervision_helpers import Crashing, Journal, Steady, Stubborn, fast_policy

from duckmesh import metrics
from duckmesh.supervisors import Actor, ActorState, FunctionActor, Supervisor


class WithHelpers(Actor):
    """A leaf that runs its own nursery of helper tasks, so cancellation reaches it as a group."""

    def __init__(self, name: str, journal: Journal) -> None:
        super().__init__(name)
        self.journal = journal

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                nursery.start_soon(trio.sleep_forever)
                task_status.started()
        except BaseException as exc:
            if isinstance(exc, BaseExceptionGroup) and exc.split(trio.Cancelled)[1] is None:
                self.journal.note(self.name, "cancelled")
            raise


class InFlight(Actor):
    """Works in 2-second jobs; on stop it finishes the job it is in, then returns."""

    def __init__(self, name: str, journal: Journal) -> None:
        super().__init__(name)
        self.journal = journal
        self.working = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while not self.stop_requested.is_set():
                self.journal.note(self.name, "job start")
                self.working.set()
                await trio.sleep(2.0)
                self.journal.note(self.name, "job done")
        except trio.Cancelled:
            self.journal.note(self.name, "cancelled")
            raise
        self.journal.note(self.name, "returned")


def _restarts_metric(actor: str) -> float:
    value = metrics.REGISTRY.get_sample_value("duckmesh_actor_restarts_total", {"actor": actor})
    return value or 0.0


async def test_cancellation_reaches_every_actor_and_is_not_a_failure() -> None:
    journal = Journal()
    leaves: list[Actor] = [
        Steady("cancel-a", journal),
        Stubborn("cancel-b", journal),
        WithHelpers("cancel-c", journal),
    ]
    inner = Supervisor("cancel-inner", leaves[1:], fast_policy(strategy="one_for_all"))
    root = Supervisor("cancel-root", [leaves[0], inner], fast_policy())
    before = {a.name: _restarts_metric(a.name) for a in [*leaves, inner]}

    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        nursery.cancel_scope.cancel()

    assert sorted(a for a, what, _ in journal.events if what == "cancelled") == [
        "cancel-a",
        "cancel-b",
        "cancel-c",
    ]
    for path, stats in root.tree():
        assert stats.state is ActorState.STOPPED, path
        assert stats.restarts == 0, path
        assert stats.last_error is None, path
    assert {a.name: _restarts_metric(a.name) for a in [*leaves, inner]} == before


async def test_keyboard_interrupt_propagates_without_restart() -> None:
    async def interrupt() -> None:
        raise KeyboardInterrupt

    child = FunctionActor("interrupter", interrupt)
    sup = Supervisor("sup", [child], fast_policy())

    with pytest.RaisesGroup(KeyboardInterrupt, flatten_subgroups=True):
        await sup.run()
    assert child.statistics().restarts == 0
    assert child.statistics().last_error is None


async def test_stop_cuts_off_a_child_that_ignores_it_at_the_grace_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    polite = Steady("polite", journal)
    stubborn = Stubborn("stubborn", journal)
    sup = Supervisor("sup", [polite, stubborn], fast_policy(shutdown_grace=3.0))

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        stop_at = trio.current_time()
        await sup.stop()
        stopped_at = trio.current_time()

    assert stopped_at - stop_at == pytest.approx(3.0)
    assert journal.times("polite", "stop") == [stop_at]
    assert journal.times("stubborn", "cancelled") == [pytest.approx(stop_at + 3.0)]
    assert polite.statistics().state is ActorState.STOPPED
    assert stubborn.statistics().state is ActorState.STOPPED
    assert stubborn.statistics().last_error is None
    assert sup.statistics().state is ActorState.STOPPED


async def test_nested_subtree_is_cut_off_at_the_parents_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    stubborn = Stubborn("deep", journal)
    inner = Supervisor("inner", [stubborn], fast_policy(shutdown_grace=60.0))
    root = Supervisor("root", [inner], fast_policy(shutdown_grace=2.0))

    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        stop_at = trio.current_time()
        await root.stop()

    assert journal.times("deep", "cancelled") == [pytest.approx(stop_at + 2.0)]
    assert stubborn.stop_requested.is_set()


async def test_well_behaved_child_finishes_in_flight_work_on_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    worker = InFlight("worker", journal)
    sup = Supervisor("sup", [worker], fast_policy(shutdown_grace=5.0))

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await worker.working.wait()
        stop_at = trio.current_time()
        await sup.stop()
        stopped_at = trio.current_time()

    assert journal.sequence() == [
        ("worker", "job start"),
        ("worker", "job done"),
        ("worker", "returned"),
    ]
    # It took the 2 s the job needed, not the 5 s grace.
    assert stopped_at - stop_at == pytest.approx(2.0)
    assert worker.statistics().state is ActorState.STOPPED


async def test_stop_during_backoff_does_not_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    flaky = Crashing("flaky", journal, crashes=1)
    sup = Supervisor("sup", [flaky], fast_policy(backoff_initial=30.0))

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await flaky.crashed.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert flaky.statistics().state is ActorState.BACKING_OFF
        stop_at = trio.current_time()
        await sup.stop()
        assert trio.current_time() == stop_at  # did not sit out the 30 s backoff

    assert journal.sequence() == [("flaky", "start"), ("flaky", "crash")]
    assert flaky.statistics().state is ActorState.STOPPED
    assert flaky.statistics().restarts == 0


async def test_stop_before_run_and_after_run_return_at_once() -> None:
    journal = Journal()
    sup = Supervisor("sup", [Steady("a", journal)], fast_policy())
    await sup.stop()  # not running: nothing to wait for
    await sup.run()  # stop was already requested: starts nothing, returns
    assert journal.events == []
    assert sup.statistics().state is ActorState.STOPPED
    await sup.stop()
