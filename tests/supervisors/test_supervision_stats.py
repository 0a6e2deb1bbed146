"""Statistics, tree(), Prometheus metrics, FunctionActor and mailboxes."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing
from supervision_helpers import Crashing, Journal, Steady, fast_policy

from duckmesh import metrics
from duckmesh.supervisors import (
    Actor,
    ActorState,
    ActorStatistics,
    EscalationError,
    FunctionActor,
    Supervisor,
)


def _sample(metric: str, actor: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(metric, {"actor": actor})


async def test_tree_reports_paths_states_and_restart_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    coordinator = Crashing("stats-coordinator", journal, crashes=2)
    commit = Supervisor("stats-commit", [coordinator], fast_policy())
    api = Steady("stats-api", journal)
    root = Supervisor("stats-root", [api, commit], fast_policy())
    restarts_before = _sample("duckmesh_actor_restarts_total", "stats-coordinator") or 0.0

    assert [stats.state for _, stats in root.tree()] == [ActorState.STOPPED] * 4  # never ran

    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        await coordinator.settled.wait()
        tree = dict(root.tree())
        assert list(tree) == [
            "stats-root",
            "stats-root/stats-api",
            "stats-root/stats-commit",
            "stats-root/stats-commit/stats-coordinator",
        ]
        assert all(stats.state is ActorState.RUNNING for stats in tree.values())
        coordinator_stats = tree["stats-root/stats-commit/stats-coordinator"]
        assert coordinator_stats.restarts == 2
        assert coordinator_stats.last_error == "RuntimeError: boom 2"
        assert tree["stats-root/stats-api"].restarts == 0
        assert _sample("duckmesh_actor_restarts_total", "stats-coordinator") == restarts_before + 2
        assert _sample("duckmesh_actor_up", "stats-coordinator") == 1
        assert _sample("duckmesh_actor_up", "stats-root") == 1
        await root.stop()

    assert all(stats.state is ActorState.STOPPED for _, stats in root.tree())
    assert _sample("duckmesh_actor_up", "stats-coordinator") == 0
    assert _sample("duckmesh_actor_up", "stats-root") == 0


async def test_state_goes_through_backing_off(autojump_clock: trio.testing.MockClock) -> None:
    journal = Journal()
    flaky = Crashing("flaky", journal, crashes=1, crash_after=1.0)
    sup = Supervisor("sup", [flaky], fast_policy(backoff_initial=5.0))
    seen: list[ActorState] = [flaky.statistics().state]

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        seen.append(flaky.statistics().state)
        await flaky.crashed.wait()
        await trio.testing.wait_all_tasks_blocked()
        seen.append(flaky.statistics().state)
        assert _sample("duckmesh_actor_up", "flaky") == 0
        await flaky.settled.wait()
        seen.append(flaky.statistics().state)
        await sup.stop()
    seen.append(flaky.statistics().state)

    assert seen == [
        ActorState.STOPPED,
        ActorState.RUNNING,
        ActorState.BACKING_OFF,
        ActorState.RUNNING,
        ActorState.STOPPED,
    ]


def test_statistics_as_dict_is_json_ready() -> None:
    stats = ActorStatistics(
        name="x",
        state=ActorState.BACKING_OFF,
        restarts=3,
        last_error="RuntimeError: boom",
        last_error_at=1700000000.5,
    )
    assert json.loads(json.dumps(stats.as_dict())) == {
        "name": "x",
        "state": "backing_off",
        "restarts": 3,
        "last_error": "RuntimeError: boom",
        "last_error_at": 1700000000.5,
    }
    assert [s.value for s in ActorState] == [
        "starting",
        "running",
        "backing_off",
        "stopped",
        "failed",
    ]


async def test_function_actor_with_and_without_task_status() -> None:
    ready = trio.Event()
    release = trio.Event()
    observed: list[ActorState] = []

    async def plain() -> None:
        observed.append(plain_actor.statistics().state)  # running as soon as it is called
        await release.wait()

    async def with_status(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        observed.append(status_actor.statistics().state)  # not running until it says so
        task_status.started()
        ready.set()
        await release.wait()

    plain_actor = FunctionActor("plain", plain)
    status_actor = FunctionActor("with-status", with_status)
    sup = Supervisor("sup", [plain_actor, status_actor], fast_policy())

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await ready.wait()
        assert status_actor.statistics().state is ActorState.RUNNING
        release.set()
    assert observed == [ActorState.RUNNING, ActorState.STARTING]
    assert sup.statistics().state is ActorState.STOPPED  # all children done


class Echo(Actor):
    """Crashes on the message "crash"; records everything else."""

    def __init__(self) -> None:
        super().__init__("echo", mailbox_size=8)
        self.received: list[object] = []
        self.got = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self._inbox is not None
        task_status.started()
        while True:
            message = await self._inbox.receive()
            if message == "crash":
                raise RuntimeError("asked to crash")
            self.received.append(message)
            self.got.set()


async def test_mailbox_survives_a_restart(autojump_clock: trio.testing.MockClock) -> None:
    echo = Echo()
    assert echo.mailbox is not None
    sup = Supervisor("sup", [echo], fast_policy(backoff_initial=10.0))

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await echo.mailbox.send("crash")
        await echo.mailbox.send("hello")  # queued while echo backs off
        await echo.got.wait()
        await sup.stop()

    assert echo.received == ["hello"]
    assert echo.statistics().restarts == 1


def test_names_are_validated() -> None:
    journal = Journal()
    with pytest.raises(ValueError, match="same name"):
        Supervisor("sup", [Steady("a", journal), Steady("a", journal)])
    with pytest.raises(ValueError, match="no '/'"):
        Steady("a/b", journal)
    with pytest.raises(ValueError, match="non-empty"):
        Steady("", journal)


async def test_last_error_looks_inside_a_single_error_group() -> None:
    async def fails_in_a_helper() -> None:
        async def helper() -> None:
            raise OSError("disk full")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(helper)

    child = FunctionActor("nested-error", fails_in_a_helper)
    sup = Supervisor("sup", [child], fast_policy(max_restarts=0))
    with pytest.raises(EscalationError, match="OSError: disk full"):
        await sup.run()
    assert child.statistics().last_error == "OSError: disk full"
