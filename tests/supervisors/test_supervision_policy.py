"""RestartPolicy arithmetic and the restart-intensity window, without Trio."""

from __future__ import annotations

import random

import pytest

from duckmesh.supervisors import RestartPolicy
from duckmesh.supervisors._policy import RestartWindow


def test_defaults() -> None:
    policy = RestartPolicy()
    assert policy.strategy == "one_for_one"
    assert (policy.max_restarts, policy.within_seconds) == (5, 60.0)
    assert (policy.backoff_initial, policy.backoff_max, policy.backoff_jitter) == (0.1, 10.0, 0.2)
    assert policy.shutdown_grace == 5.0
    assert policy.restart_on_normal_exit is False


def test_backoff_doubles_then_caps() -> None:
    policy = RestartPolicy(backoff_initial=0.5, backoff_max=3.0, backoff_jitter=0.0)
    assert [policy.backoff_delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert policy.backoff_delay(10_000) == 3.0  # no overflow on long runs


def test_backoff_jitter_stays_within_fraction() -> None:
    policy = RestartPolicy(backoff_initial=1.0, backoff_max=1.0, backoff_jitter=0.2)
    rng = random.Random(7)
    delays = [policy.backoff_delay(1, rng) for _ in range(500)]
    assert all(0.8 <= d <= 1.2 for d in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"strategy": "rest_for_one"},
        {"max_restarts": -1},
        {"within_seconds": 0},
        {"backoff_initial": -0.1},
        {"backoff_initial": 5.0, "backoff_max": 1.0},
        {"backoff_jitter": 1.0},
        {"shutdown_grace": -1},
    ],
)
def test_invalid_policies_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"must be|strategy"):
        RestartPolicy(**kwargs)  # type: ignore[arg-type]


def test_window_admits_max_restarts_then_refuses_until_old_ones_age_out() -> None:
    window = RestartWindow(max_restarts=2, within_seconds=10.0)
    assert window.admit(0.0, "a") == 1
    assert window.admit(1.0, "a") == 2
    assert window.admit(2.0, "b") is None  # a third restart within 10 s
    assert window.admit(10.0, "b") == 1  # the restart at t=0 has aged out
    assert window.admit(10.5, "a") is None
    assert window.admit(11.0, "a") == 1  # t=1 aged out; only a's own recent restarts count


def test_zero_restarts_means_first_failure_escalates() -> None:
    assert RestartWindow(max_restarts=0, within_seconds=1.0).admit(0.0, "a") is None
