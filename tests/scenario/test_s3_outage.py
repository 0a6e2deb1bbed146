"""Object-store outages in the scenario runner (issue 19), with S3 object storage.

(a) The checker: during an outage a query may answer right or
    ``OBJECT_STORE_UNAVAILABLE`` (503), a short token wait also
    ``CONSISTENCY_TIMEOUT``; any other error is a violation. The action's
    shape is checked.
(b) End to end on real processes (Postgres, API, coordinator, the moto
    server behind the harness's relay): writes into two tables, the store
    refusing connections for 5 s and then hanging for 2 s while writes and
    queries are in flight; every write is acknowledged during the outages,
    every acknowledged write is visible exactly once afterwards, remembered
    snapshots answer the same and ``duckmesh replay verify`` passes. The
    recording names the storage, so a replay runs on S3 too.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import httpx
import pytest

from duckmesh_testing.scenario import Executor, InvariantViolation, System, load_recording
from duckmesh_testing.scenario import actions as A

COLUMNS: list[dict[str, Any]] = [
    {"name": "id", "type": "BIGINT", "nullable": False},
    {"name": "v", "type": "VARCHAR"},
    {"name": "n", "type": "BIGINT"},
]
KEYED: list[dict[str, Any]] = [{"name": "k", "type": "INTEGER", "nullable": False}, *COLUMNS[1:]]


def _rec(key: str, **payload: Any) -> dict[str, Any]:
    return {"idempotency_key": key, "op": "insert", "payload": payload}


def _answer(status: int, code: str) -> httpx.Response:
    body = {"error_code": code, "message": code.lower(), "retryable": True, "context": {}}
    return httpx.Response(status, json=body)


def test_only_documented_errors_pass_during_an_outage() -> None:
    system = types.SimpleNamespace(max_watermark=0, load=None)
    ex = Executor(system)  # type: ignore[arg-type]
    assert ex._outage_answer(httpx.Response(200, json={"rows": []}), "q") == {"rows": []}
    assert ex._outage_answer(_answer(503, "OBJECT_STORE_UNAVAILABLE"), "q") is None
    assert ex.stats.store_unavailable == 1
    timeout = _answer(504, "CONSISTENCY_TIMEOUT")
    assert ex._outage_answer(timeout, "a short wait", "CONSISTENCY_TIMEOUT") is None
    for status, code in (
        (504, "CONSISTENCY_TIMEOUT"),  # not where no wait was asked for
        (500, "INTERNAL_ERROR"),
        (500, "DATA_FILE_CORRUPT"),  # an unreachable store is not a damaged file
        (500, "OBJECT_STORE_UNAVAILABLE"),  # documented as 503
    ):
        with pytest.raises(InvariantViolation, match="object-store outage"):
            ex._outage_answer(_answer(status, code), "q")


def test_the_outage_action_is_checked() -> None:
    good = A.s3_outage("refuse", 2.5, "t", [_rec("a", id=1)], [_rec("b", id=2)])
    assert A.validate(json.loads(json.dumps(good))) == good
    assert "refuse, 2.5s" in A.describe(good)
    for bad in (
        dict(good, how="flood"),
        dict(good, seconds=0),
        dict(good, seconds=A.MAX_OUTAGE_S + 1),
        {k: v for k, v in good.items() if k != "before"},
    ):
        with pytest.raises(A.BadAction):
            A.validate(bad)


@pytest.mark.slow
def test_writes_survive_object_store_outages(tmp_path: Path) -> None:
    keys = iter(range(1, 10_000))

    def batch(n: int, table: str) -> list[dict[str, Any]]:
        if table == "keyed":
            out = []
            for _ in range(n):
                i = next(keys)
                out.append(
                    {"idempotency_key": f"r{i}", "op": "upsert", "payload": {"k": i % 5, "n": i}}
                )
            return out
        return [_rec(f"r{i}", id=i, n=i) for i in (next(keys) for _ in range(n))]

    with System(storage="s3", workdir=tmp_path / "system") as system:
        assert system.s3 is not None
        ex = Executor(system)
        ex.run(A.create_table("appended", COLUMNS))
        ex.run(A.create_table("keyed", KEYED, ["k"]))
        ex.run(A.ingest("appended", batch(5, "appended")))
        ex.run(A.query_latest("keyed"))
        ex.run(A.s3_outage("refuse", 5.0, "appended", batch(3, "appended"), batch(6, "appended")))
        ex.run(A.ingest("keyed", batch(4, "keyed")))
        ex.run(A.s3_outage("hang", 2.0, "keyed", batch(2, "keyed"), batch(3, "keyed")))
        ex.run(A.query_token("appended", "aggregate"))
        ex.finish()
        ex.verify_replay()
        assert ex.stats.kinds["s3-outage"] == 2
        assert ex.stats.violations == 0
        assert ex.stats.acks == 5 + 3 + 6 + 4 + 2 + 3
        recording = ex.save(tmp_path / "recording.json")
        assert load_recording(recording)["storage"] == "s3"
        # The data files are objects in the bucket, none under objects/.
        assert not list((system.workdir / "data").rglob("objects/**/*.parquet"))
