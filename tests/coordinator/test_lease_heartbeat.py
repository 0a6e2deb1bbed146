"""A slow commit keeps its lease: another coordinator cannot take the scope
half-way, and the slow commit still publishes."""

from __future__ import annotations

import threading
import time

import pytest

from duckmesh.catalog import commands
from duckmesh.coordinator.committer import CommitOutcome, CommitSettings, Committer
from duckmesh.coordinator.lease import LeaseHeartbeat
from duckmesh.ingest.validation import TableValidator, validate_records
from duckmesh.runtime import Runtime
from duckmesh.supervisors.faults import FaultPoints

LEASE_S = 0.6
STALL_S = 2.0  # more than three leases


def _committer(rt: Runtime, name: str, faults: FaultPoints) -> Committer:
    return Committer(rt.db, rt.bus, rt.store, faults, CommitSettings(lease_s=LEASE_S), name)


def _slow_commit_race(rt: Runtime) -> tuple[CommitOutcome | None, list[object]]:
    table = rt.db.call(
        lambda c: commands.create_table(
            c, "default", {"name": "log", "columns": [{"name": "id", "type": "BIGINT"}]}
        )
    )
    records = validate_records(
        TableValidator.for_table(table),
        [{"idempotency_key": "a", "payload": {"id": 1}}],
        max_records=10,
        max_record_bytes=1000,
    )
    rt.bus.publish("default", [records])
    faults = FaultPoints(enabled=True)
    faults.arm("coordinator.after_parquet_write", "delay", delay_s=STALL_S)
    slow = _committer(rt, "slow", faults)
    result: list[CommitOutcome | None] = []
    worker = threading.Thread(target=lambda: result.append(slow.commit_once()))
    worker.start()
    deadline = time.monotonic() + 10
    while faults.hits("coordinator.after_parquet_write") == 0:  # until it stalls
        assert time.monotonic() < deadline
        time.sleep(0.01)
    claims: list[object] = []
    while worker.is_alive():
        batch = rt.bus.claim("rival", limit=10, max_bytes=1 << 20, lease_s=LEASE_S)
        if batch is not None:
            claims.append(batch)
            break
        time.sleep(0.05)
    worker.join()
    return result[0], claims


def test_slow_commit_keeps_its_lease_and_publishes(runtime: Runtime) -> None:
    outcome, rival_claims = _slow_commit_race(runtime)
    assert rival_claims == []
    assert outcome is not None
    assert outcome.snapshot_id is not None
    assert outcome.watermark == 1


def test_without_renewal_the_rival_takes_over_and_fencing_stops_the_slow_one(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Negative control: the same race with the heartbeat switched off.
    monkeypatch.setattr(LeaseHeartbeat, "_run", lambda self: None)
    outcome, rival_claims = _slow_commit_race(runtime)
    assert len(rival_claims) == 1
    assert outcome is not None
    assert outcome.snapshot_id is None  # lease lost: the publish was refused
