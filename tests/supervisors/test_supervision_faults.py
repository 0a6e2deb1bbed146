"""Fault points: parsing, arming, firing counts, and refusing what they should refuse."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time

import pytest

from duckmesh.supervisors.faults import (
    FAULT_ACTIONS,
    KNOWN_FAULT_POINTS,
    FaultInjected,
    FaultPoints,
)

WRITE = "coordinator.after_parquet_write"
PUBLISH = "coordinator.before_publish_commit"


def test_constants() -> None:
    assert FAULT_ACTIONS == ("raise", "kill", "delay", "enospc")
    assert WRITE in KNOWN_FAULT_POINTS
    assert "compaction.before_publish" in KNOWN_FAULT_POINTS


def test_raise_fires_exactly_count_times_then_disarms() -> None:
    points = FaultPoints(enabled=True)
    points.arm(WRITE, "raise", count=2)
    assert points.armed() == {WRITE: 2}
    for _ in range(2):
        with pytest.raises(FaultInjected) as caught:
            points.hit(WRITE)
        assert caught.value.point == WRITE
    points.hit(WRITE)  # disarmed now: passes silently
    points.hit(PUBLISH)  # never armed
    assert points.armed() == {}
    assert points.hits(WRITE) == 3
    assert points.fired(WRITE) == 2
    assert points.hits(PUBLISH) == 1
    assert points.fired(PUBLISH) == 0


def test_disarm() -> None:
    points = FaultPoints(enabled=True)
    points.arm(WRITE)
    points.disarm(WRITE)
    points.disarm(PUBLISH)  # not armed: no error
    points.hit(WRITE)
    assert points.fired(WRITE) == 0


def test_kill_sends_sigkill_to_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    points = FaultPoints(enabled=True)
    points.arm(PUBLISH, "kill")
    points.hit(PUBLISH)
    points.hit(PUBLISH)
    assert sent == [(os.getpid(), signal.SIGKILL)]


def test_delay_blocks_the_calling_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    points = FaultPoints(enabled=True)
    points.arm("compaction.after_write", "delay", count=2, delay_s=0.25)
    for _ in range(3):
        points.hit("compaction.after_write")
    assert slept == [0.25, 0.25]


def test_enospc_raises_a_disk_full_os_error() -> None:
    points = FaultPoints.from_spec("coordinator.store_put=enospc:1", enabled=True)
    with pytest.raises(OSError, match="No space left") as caught:
        points.hit("coordinator.store_put")
    assert caught.value.errno == errno.ENOSPC
    points.hit("coordinator.store_put")  # once only
    assert points.fired("coordinator.store_put") == 1


def test_disabled_points_refuse_to_arm_and_never_fire() -> None:
    points = FaultPoints()
    assert not points.enabled
    with pytest.raises(ValueError, match="disabled"):
        points.arm(WRITE)
    points.hit(WRITE)
    assert points.hits(WRITE) == 0


def test_unknown_names_and_bad_arguments_are_rejected() -> None:
    points = FaultPoints(enabled=True)
    with pytest.raises(ValueError, match=r"unknown fault point 'nope'.*coordinator\."):
        points.arm("nope")
    with pytest.raises(ValueError, match="unknown fault action"):
        points.arm(WRITE, "explode")
    with pytest.raises(ValueError, match="count"):
        points.arm(WRITE, count=0)
    with pytest.raises(ValueError, match="delay"):
        points.arm(WRITE, "delay", delay_s=-1)


def test_from_spec_arms_each_entry() -> None:
    points = FaultPoints.from_spec(
        f" {WRITE}=raise:2 , {PUBLISH}=kill,compaction.after_write=delay:3:0.5 ", enabled=True
    )
    assert points.armed() == {WRITE: 2, PUBLISH: 1, "compaction.after_write": 3}
    assert FaultPoints.from_spec("", enabled=False).armed() == {}
    assert FaultPoints.from_spec("", enabled=True).enabled


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("coordinator.after_parquet_write", "expected 'name=action"),
        ("coordinator.after_parquet_write=", "expected 'name=action"),
        ("=raise", "expected 'name=action"),
        ("nope=raise", "unknown fault point 'nope'"),
        (f"{WRITE}=explode", "action must be one of"),
        (f"{WRITE}=raise:two", "count 'two' is not an integer"),
        (f"{WRITE}=raise:0", "count must be >= 1"),
        (f"{WRITE}=raise:1:2", "too many ':' fields"),
        (f"{WRITE}=delay:1:soon", "delay 'soon' is not a number"),
        (f"{WRITE}=raise,{WRITE}=kill", "appears twice"),
    ],
)
def test_from_spec_rejects_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaultPoints.from_spec(spec, enabled=True)


def test_from_spec_refuses_to_arm_when_disabled() -> None:
    with pytest.raises(ValueError, match="DUCKMESH_ENABLE_FAULTS"):
        FaultPoints.from_spec(f"{WRITE}=raise", enabled=False)


def test_hits_from_many_threads_fire_exactly_count_times() -> None:
    points = FaultPoints(enabled=True)
    points.arm(WRITE, "raise", count=50)
    raised: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(100):
            try:
                points.hit(WRITE)
            except FaultInjected:
                with lock:
                    raised.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(raised) == 50
    assert points.hits(WRITE) == 800
    assert points.fired(WRITE) == 50
