"""Restart behaviour: backoff, one_for_one, one_for_all, intensity and escalation."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from supervision_helpers import Crashing, Journal, Steady, fast_policy

from duckmesh.supervisors import ActorState, EscalationError, Supervisor


async def test_crashing_child_restarts_with_growing_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    flaky = Crashing("flaky", journal, crashes=4)
    sup = Supervisor("sup", [flaky], fast_policy(backoff_initial=1.0, backoff_max=4.0))

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await flaky.settled.wait()
        await sup.stop()

    crashes = journal.times("flaky", "crash")
    starts = journal.times("flaky", "start")
    assert len(crashes) == 4
    assert len(starts) == 5
    # Each restart waits initial * 2**(n-1), capped at backoff_max: 1, 2, 4, 4.
    delays = [start - crash for crash, start in zip(crashes, starts[1:], strict=True)]
    assert delays == pytest.approx([1.0, 2.0, 4.0, 4.0])
    stats = flaky.statistics()
    assert stats.restarts == 4
    assert stats.last_error == "RuntimeError: boom 4"
    assert stats.last_error_at is not None
    assert stats.state is ActorState.STOPPED


async def test_child_failing_before_start_is_retried_before_next_sibling_starts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    first = Crashing("first", journal, crashes=2, before_start=True)
    second = Steady("second", journal)
    sup = Supervisor("sup", [first, second], fast_policy())

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        # run() reported started only once every child had started, in order.
        assert journal.sequence() == [
            ("first", "start"),
            ("first", "crash"),
            ("first", "start"),
            ("first", "crash"),
            ("first", "start"),
            ("second", "start"),
        ]
        assert sup.statistics().state is ActorState.RUNNING
        await sup.stop()


async def test_one_for_one_siblings_keep_running(autojump_clock: trio.testing.MockClock) -> None:
    journal = Journal()
    left = Steady("left", journal)
    flaky = Crashing("flaky", journal, crashes=3)
    right = Steady("right", journal)
    sup = Supervisor("sup", [left, flaky, right], fast_policy(strategy="one_for_one"))

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await flaky.settled.wait()
        assert left.statistics().state is ActorState.RUNNING
        assert right.statistics().state is ActorState.RUNNING
        await sup.stop()

    for sibling in ("left", "right"):
        assert journal.sequence().count((sibling, "start")) == 1
        assert journal.of(sibling, "cancelled") == []
        assert journal.of(sibling, "stop") != []
    assert left.statistics().restarts == right.statistics().restarts == 0
    assert flaky.statistics().restarts == 3


async def test_one_for_all_restarts_the_whole_group_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    a = Steady("a", journal)
    b = Crashing("b", journal, crashes=1, crash_after=5.0)
    c = Steady("c", journal)
    sup = Supervisor("sup", [a, b, c], fast_policy(strategy="one_for_all", backoff_initial=2.0))

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await b.settled.wait()
        await trio.testing.wait_all_tasks_blocked()
        await sup.stop()

    seq = journal.sequence()
    crash_at = seq.index(("b", "crash"))
    assert seq[:crash_at] == [("a", "start"), ("b", "start"), ("c", "start")]
    # The siblings were cancelled (order between them is up to Trio) ...
    assert sorted(seq[crash_at + 1 : crash_at + 3]) == [("a", "cancelled"), ("c", "cancelled")]
    # ... then the whole group started again, in order, after the backoff.
    assert seq[crash_at + 3 : crash_at + 6] == [("a", "start"), ("b", "start"), ("c", "start")]
    assert journal.times("a", "start")[1] - journal.times("b", "crash")[0] == pytest.approx(2.0)
    for actor in (a, b, c):
        assert actor.statistics().restarts == 1
    # Being cancelled for a group restart is not a failure.
    assert a.statistics().last_error is None
    assert c.statistics().last_error is None
    assert b.statistics().last_error == "RuntimeError: boom 1"


async def test_exceeding_intensity_escalates(autojump_clock: trio.testing.MockClock) -> None:
    journal = Journal()
    doomed = Crashing("doomed", journal, crashes=None)
    bystander = Steady("bystander", journal)
    sup = Supervisor("sup", [bystander, doomed], fast_policy(max_restarts=3, within_seconds=60))

    with pytest.raises(EscalationError) as caught:
        await sup.run()

    error = caught.value
    assert error.actor == "sup"
    assert error.child == "doomed"
    assert error.last_error == "RuntimeError: boom 4"
    assert isinstance(error.__cause__, RuntimeError)
    assert error.origin == "sup/doomed"
    # 3 restarts were allowed; the 4th crash would have needed a 4th restart.
    assert len(journal.of("doomed", "crash")) == 4
    assert doomed.statistics().restarts == 3
    assert doomed.statistics().state is ActorState.FAILED
    assert sup.statistics().state is ActorState.FAILED
    # Escalation stops the siblings gracefully.
    assert journal.of("bystander", "stop") != []
    assert bystander.statistics().state is ActorState.STOPPED


async def test_restarts_outside_the_window_do_not_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    # Backoff 10 s each time, at most 2 restarts per 15 s: never more than 2 in the window.
    slow_flaky = Crashing("slow-flaky", journal, crashes=6)
    policy = fast_policy(
        max_restarts=2, within_seconds=15.0, backoff_initial=10.0, backoff_max=10.0
    )
    sup = Supervisor("sup", [slow_flaky], policy)

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await slow_flaky.settled.wait()
        await sup.stop()

    assert slow_flaky.statistics().restarts == 6
    assert sup.statistics().state is ActorState.STOPPED


async def test_nested_supervisor_escalates_to_parent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    coordinator = Crashing("coordinator", journal, crashes=None)
    commit = Supervisor("commit", [coordinator], fast_policy(max_restarts=1))
    api = Steady("api", journal)
    root = Supervisor("root", [api, commit], fast_policy(max_restarts=1))

    with pytest.raises(EscalationError) as caught:
        await root.run()

    error = caught.value
    assert (error.actor, error.child) == ("root", "commit")
    assert isinstance(error.__cause__, EscalationError)
    assert error.origin == "root/commit/coordinator"
    assert error.origin_error.startswith("RuntimeError: boom")
    # root restarted commit once; each commit run restarted coordinator once before giving up.
    assert commit.statistics().restarts == 1
    assert commit.statistics().state is ActorState.FAILED
    commit_error = commit.statistics().last_error
    assert commit_error is not None
    assert commit_error.startswith("EscalationError: supervisor 'commit' gave up")
    assert len(journal.of("coordinator", "crash")) == 4
    assert journal.sequence().count(("api", "start")) == 1
    assert api.statistics().state is ActorState.STOPPED
    assert root.statistics().state is ActorState.FAILED


async def test_one_for_all_escalates_when_group_keeps_failing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    a = Steady("a", journal)
    b = Crashing("b", journal, crashes=None)
    sup = Supervisor("sup", [a, b], fast_policy(strategy="one_for_all", max_restarts=2))

    with pytest.raises(EscalationError, match="more than 2 restarts"):
        await sup.run()

    assert journal.sequence().count(("a", "start")) == 3
    assert a.statistics().restarts == b.statistics().restarts == 2
    assert b.statistics().state is ActorState.FAILED
    assert a.statistics().state is ActorState.STOPPED


async def test_normal_exit_is_done_unless_policy_restarts_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs: list[float] = []
    done = trio.Event()

    from duckmesh.supervisors import FunctionActor

    async def one_shot() -> None:
        runs.append(trio.current_time())
        if len(runs) == 3:
            done.set()

    transient = Supervisor("transient", [FunctionActor("job", one_shot)], fast_policy())
    await transient.run()  # returns once its only child is done
    assert len(runs) == 1
    assert transient.children[0].statistics().state is ActorState.STOPPED

    runs.clear()
    permanent = Supervisor(
        "permanent", [FunctionActor("job", one_shot)], fast_policy(restart_on_normal_exit=True)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(permanent.run)
        await done.wait()
        await permanent.stop()
    assert len(runs) >= 3
    assert runs[1] - runs[0] == pytest.approx(1.0)
    assert runs[2] - runs[1] == pytest.approx(2.0)
    assert permanent.children[0].statistics().last_error is None


async def test_one_for_all_failure_during_group_startup_restarts_the_group(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    a = Steady("a", journal)
    b = Crashing("b", journal, crashes=1, before_start=True)
    c = Steady("c", journal)
    sup = Supervisor("sup", [a, b, c], fast_policy(strategy="one_for_all"))

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)  # returns only once a whole generation is up
        assert journal.sequence() == [
            ("a", "start"),
            ("b", "start"),
            ("b", "crash"),
            ("a", "cancelled"),
            ("a", "start"),
            ("b", "start"),
            ("c", "start"),
        ]
        assert sup.statistics().state is ActorState.RUNNING
        await sup.stop()
