"""The coordinator's adaptive cadence (ADR 0015): after a commit that found
records it pauses for what is left of the busy interval since the commit
started, split between the busy tenants; never after a full batch or a
given-back one, and not at all with the interval at 0."""

from __future__ import annotations

import pytest

from duckmesh.coordinator.actor import BUSY_WINDOW_S, Cadence
from duckmesh.coordinator.committer import CommitOutcome

BATCH_MAX = 1000


def committed(tenant: str = "t", records: int = 10) -> CommitOutcome:
    return CommitOutcome(tenant, 1, records, 1, 0, records)


def test_commits_start_at_most_once_per_interval_while_busy() -> None:
    cadence = Cadence(linger_s=0.05, busy_interval_s=0.1)
    assert cadence.busy_pause(committed(), 0.01, BATCH_MAX, now=0) == pytest.approx(0.09)
    assert cadence.busy_pause(committed(), 0.07, BATCH_MAX, now=0) == pytest.approx(0.03)
    assert cadence.busy_pause(committed(), 0.5, BATCH_MAX, now=0) == 0  # slower than the interval


def test_no_pause_after_a_full_batch_a_given_back_one_or_with_the_interval_at_zero() -> None:
    cadence = Cadence(linger_s=0.05, busy_interval_s=0.1)
    assert cadence.busy_pause(committed(records=BATCH_MAX), 0.01, BATCH_MAX, now=0) == 0
    given_back = CommitOutcome("t", None, 0, 0, 0, 0)
    assert cadence.busy_pause(given_back, 0.01, BATCH_MAX, now=0) == 0
    off = Cadence(linger_s=0.05, busy_interval_s=0)
    assert off.busy_pause(committed(), 0.01, BATCH_MAX, now=0) == 0


def test_busy_tenants_share_the_pause_until_they_go_quiet() -> None:
    cadence = Cadence(linger_s=0.05, busy_interval_s=0.1)
    assert cadence.busy_pause(committed("a"), 0.02, BATCH_MAX, now=10.0) == pytest.approx(0.08)
    assert cadence.busy_pause(committed("b"), 0.02, BATCH_MAX, now=10.1) == pytest.approx(0.04)
    later = 10.1 + BUSY_WINDOW_S + 0.01  # "a" has not committed since: b alone
    assert cadence.busy_pause(committed("b"), 0.02, BATCH_MAX, now=later) == pytest.approx(0.08)
