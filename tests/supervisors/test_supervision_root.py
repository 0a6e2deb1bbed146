"""run_root: exit codes, the single failure log line, and graceful stop on cancellation."""

from __future__ import annotations

import pytest
import structlog.testing
import trio
import trio.testing
from supervision_helpers import Crashing, Journal, Steady, Stubborn, fast_policy

from duckmesh.supervisors import ActorState, Supervisor, run_root


async def test_returns_0_after_graceful_stop_and_calls_on_started_once_up() -> None:
    journal = Journal()
    root = Supervisor("root", [Steady("a", journal), Steady("b", journal)], fast_policy())

    def on_started() -> None:
        journal.note("root", "on_started")
        root.request_stop()

    assert await run_root(root, on_started=on_started) == 0
    seq = journal.sequence()
    assert seq[:3] == [("a", "start"), ("b", "start"), ("root", "on_started")]
    assert sorted(seq[3:]) == [("a", "stop"), ("b", "stop")]  # in whichever order Trio ran them
    assert root.statistics().state is ActorState.STOPPED


async def test_returns_1_and_logs_one_error_line_when_escalation_reaches_root(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    coordinator = Crashing("coordinator", journal, crashes=None)
    commit = Supervisor("commit", [coordinator], fast_policy(max_restarts=2))
    root = Supervisor("root", [Steady("api", journal), commit], fast_policy(max_restarts=0))

    with structlog.testing.capture_logs() as logs:
        assert await run_root(root) == 1

    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert errors == [
        {
            "event": "supervision tree failed",
            "log_level": "error",
            "actor": "root/commit/coordinator",
            "error": "RuntimeError: boom 3",
        }
    ]
    events = [entry["event"] for entry in logs]
    assert events.count("actor crashed") == 4  # 3 coordinator crashes + commit escalating
    assert events.count("restarting") == 2
    assert events.count("escalated") == 2  # commit, then root
    assert root.statistics().state is ActorState.FAILED


async def test_escalation_during_startup_returns_1_without_on_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    never_up = Crashing("never-up", journal, crashes=None, before_start=True)
    root = Supervisor("root", [never_up], fast_policy(max_restarts=1))
    called: list[bool] = []

    assert await run_root(root, on_started=lambda: called.append(True)) == 1
    assert called == []


async def test_cancelling_the_caller_stops_the_tree_gracefully(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    polite = Steady("polite", journal)
    stubborn = Stubborn("stubborn", journal)
    inner = Supervisor("inner", [stubborn], fast_policy(shutdown_grace=100.0))
    root = Supervisor("root", [polite, inner], fast_policy(shutdown_grace=4.0))
    returned: list[int] = []
    t0 = trio.current_time()

    with trio.move_on_after(10.0) as scope:  # stands in for a SIGTERM handler cancelling us
        returned.append(await run_root(root))

    assert scope.cancelled_caught  # Cancelled propagated: run_root did not swallow it
    assert returned == []
    # Every actor was asked to stop when the caller was cancelled; the polite one returned at
    # once, the stubborn one was cut off at the root's grace period (not the inner 100 s).
    assert polite.stop_requested.is_set()
    assert stubborn.stop_requested.is_set()
    assert journal.times("polite", "stop") == [pytest.approx(t0 + 10.0)]
    assert journal.times("stubborn", "cancelled") == [pytest.approx(t0 + 14.0)]
    assert trio.current_time() == pytest.approx(t0 + 14.0)
    assert all(stats.state is ActorState.STOPPED for _, stats in root.tree())


async def test_stop_requested_before_run_root_returns_0() -> None:
    journal = Journal()
    root = Supervisor("root", [Steady("a", journal)], fast_policy())
    await root.stop()
    assert await run_root(root, on_started=lambda: journal.note("root", "on_started")) == 0
    assert journal.events == []
