"""The query watchdog: deadlines fire in order whatever order they were armed in."""

from __future__ import annotations

import threading

from duckmesh.query._watchdog import Watchdog


def test_an_earlier_deadline_armed_later_still_fires_on_time() -> None:
    # The thread sleeps until the earliest deadline and is woken only by an
    # earlier one: a short alarm armed behind a long one must wake it.
    watchdog = Watchdog()
    late, early = threading.Event(), threading.Event()
    long = watchdog.arm(3600, late.set)
    short = watchdog.arm(0.05, early.set)
    try:
        assert early.wait(10)
        assert short.fired
        assert not long.fired
        assert not late.is_set()
    finally:
        long.disarm()
        short.disarm()


def test_a_disarmed_alarm_never_fires_and_later_ones_still_do() -> None:
    watchdog = Watchdog()
    first, second = threading.Event(), threading.Event()
    disarmed = watchdog.arm(0.05, first.set)
    assert not disarmed.disarm()
    armed = watchdog.arm(0.1, second.set)  # later than the disarmed one: no wake-up needed
    try:
        assert second.wait(10)
        assert armed.fired
        assert not disarmed.fired
        assert not first.is_set()
    finally:
        armed.disarm()
