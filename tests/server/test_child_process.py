"""``ChildProcess``, the actor of one process of a process group, with real
processes: started when the child reports ready, stopped by SIGTERM, a
SIGKILLed child restarted, a crash loop escalated to the root (exit 1)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

import psutil
import trio

from duckmesh.procgroup import ChildProcess
from duckmesh.supervisors import RestartPolicy, Supervisor, run_root

# Reports ready on the pipe the actor passes, then runs until SIGTERM (exit 0).
READY_THEN_WAIT = """
import os, signal, sys, time
fd = int(os.environ["_DUCKMESH_READY_FD"])
os.write(fd, b"1")
os.close(fd)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(1)
"""
FAST = RestartPolicy(max_restarts=2, within_seconds=60, backoff_initial=0.01, backoff_max=0.02)


def _child(script: str) -> ChildProcess:
    return ChildProcess("c", "api", dict(os.environ), argv=[sys.executable, "-c", script])


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _wait_for(condition: Callable[[], bool]) -> None:
    with trio.fail_after(30):
        while not condition():
            await trio.sleep(0.02)


async def test_started_when_ready_stopped_by_sigterm_and_restarted_after_sigkill() -> None:
    child = _child(READY_THEN_WAIT)
    root = Supervisor("root", [child], FAST)
    codes: list[int] = []
    started = trio.Event()

    async def run() -> None:
        codes.append(await run_root(root, on_started=started.set))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        with trio.fail_after(30):
            await started.wait()
        first = child.pid
        assert first is not None
        assert _alive(first)
        os.kill(first, signal.SIGKILL)
        await _wait_for(
            lambda: child.statistics().restarts == 1 and child.row()["state"] == "running"
        )
        second = child.pid
        assert second is not None
        assert second != first
        assert "exited with status -9" in (child.statistics().last_error or "")
        await root.stop()
    assert codes == [0]
    assert not _alive(second)


async def test_a_crash_loop_escalates_and_the_root_exits_1() -> None:
    child = _child("import sys; sys.exit(3)")
    root = Supervisor("root", [Supervisor("api", [child], FAST)], FAST)
    with trio.fail_after(60):
        assert await run_root(root) == 1
    assert child.statistics().state.value == "failed"
    assert "exited with status 3" in (child.statistics().last_error or "")
