"""The scenario executor's checks and the test-only broken barrier, without processes.

The model (what an answer at a watermark must hold), the receipt checks
(retries, gapless tokens) and the action shapes are exercised directly; the
``DUCKMESH_UNSAFE_BREAK`` switch is checked for being refused in production
configurations and for really skipping the barrier when armed.
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from duckmesh import unsafe
from duckmesh.cli.main import main
from duckmesh.config import UNSAFE_BREAKS, Config, ConfigError, load_config
from duckmesh.errors import DuckMeshError
from duckmesh.query import barrier
from duckmesh.query.service import QueryRequest
from duckmesh.runtime import Runtime, build_runtime, migrate_and_bootstrap
from duckmesh_testing.scenario import Executor, InvariantViolation, load_recording
from duckmesh_testing.scenario import actions as A
from duckmesh_testing.scenario.executor import TableModel, Write
from duckmesh_testing.scenario.load import SPAN, Load


def _system(issued: int | None = 0) -> Any:
    """Just the attributes the receipt checks touch."""
    return types.SimpleNamespace(
        issued_token=issued, max_watermark=0, server_env={}, ledger=[], load=None
    )


def _executor(issued: int | None = 0) -> tuple[Executor, TableModel]:
    ex = Executor(_system(issued))
    table = TableModel("t", ["id", "v", "n"], ())
    ex.tables["t"] = table
    return ex, table


def _rec(key: str, **payload: Any) -> dict[str, Any]:
    return {"idempotency_key": key, "op": "insert", "payload": payload}


def _receipt(accepted: int, dups: int, top: int, status: str | None = None) -> dict[str, Any]:
    return {
        "accepted_count": accepted,
        "duplicate_count": dups,
        "max_visibility_token": top,
        "status": status or ("partial_duplicate" if dups else "accepted"),
    }


# -- the model ----------------------------------------------------------------


def test_keyed_model_applies_writes_in_token_order() -> None:
    table = TableModel("kv", ["k", "v", "n"], ("k",))
    table.writes = [
        Write(3, "delete", {"k": 1}),
        Write(1, "upsert", {"k": 1, "v": "a"}),
        Write(2, "upsert", {"k": 2, "v": "b", "n": 7}),
        Write(4, "insert", {"k": 2, "v": "c"}),
    ]
    assert table.rows_at(1) == [[1, "a", None]]
    assert table.rows_at(2) == [[1, "a", None], [2, "b", 7]]
    assert table.rows_at(3) == [[2, "b", 7]]
    assert table.rows_at(4) == [[2, "c", None]]  # a write replaces the whole row
    assert table.expected("aggregate", 2) == [[2, 7, 2]]
    assert table.expected("aggregate", 0) == [[0, None, 0]]


def test_the_rows_of_some_files_resolve_keys_over_them_only() -> None:
    """After a repair drops a file, a keyed table shows the newest version left
    in the other files: a delete in the dropped file un-hides the older row."""
    table = TableModel("kv", ["k", "v", "n"], ("k",))
    table.writes = [
        Write(1, "upsert", {"k": 1, "v": "a"}),
        Write(2, "upsert", {"k": 2, "v": "b"}),
        Write(3, "delete", {"k": 1}),
        Write(4, "upsert", {"k": 2, "v": "c"}),
    ]
    assert table.rows_with({1, 2, 3, 4}) == table.rows_at(4) == [[2, "c", None]]
    assert table.rows_with({1, 2}) == [[1, "a", None], [2, "b", None]]  # 3 and 4 dropped
    assert table.rows_with(set()) == []


def test_append_only_model_keeps_every_write() -> None:
    table = TableModel("log", ["id", "v", "n"], ())
    table.writes = [Write(1, "insert", {"id": 1}), Write(2, "insert", {"id": 1})]
    assert table.rows_at(2) == [[1, None, None], [1, None, None]]
    assert "order by all" in table.sql("rows")


# -- receipts -----------------------------------------------------------------


def test_new_records_take_the_next_tokens() -> None:
    ex, table = _executor(issued=10)
    ex._receipt(table, [_rec("a", id=1), _rec("b", id=2)], _receipt(2, 0, 12), waited=False)
    assert [w.token for w in table.writes] == [11, 12]
    assert ex.last_token == 12
    assert ex.system.issued_token == 12


def test_a_gap_in_tokens_is_a_violation() -> None:
    ex, table = _executor(issued=10)
    with pytest.raises(InvariantViolation, match="gapless") as info:
        ex._receipt(table, [_rec("a", id=1)], _receipt(1, 0, 13), waited=False)
    assert info.value.guarantee == "tokens are gapless and commit-ordered"


def test_a_retry_must_return_the_original_token_and_add_nothing() -> None:
    ex, table = _executor()
    first = [_rec("a", id=1), _rec("b", id=2)]
    ex._receipt(table, first, _receipt(2, 0, 2), waited=False)
    ex._receipt(table, first, _receipt(0, 2, 2), waited=False)
    assert len(table.writes) == 2
    with pytest.raises(InvariantViolation, match="returned token 3"):
        ex._receipt(table, first, _receipt(0, 2, 3), waited=False)
    # A retry counted as new would be a duplicate logical write.
    with pytest.raises(InvariantViolation, match="expected 0 accepted"):
        ex._receipt(table, first, _receipt(2, 0, 4), waited=False)


def test_a_lost_attempt_may_already_have_been_committed() -> None:
    ex, table = _executor(issued=5)
    records = [_rec("a", id=1), _rec("b", id=2)]
    ex._receipt(table, records, _receipt(0, 2, 7), waited=False, lost_attempt=True)
    assert [w.token for w in table.writes] == [6, 7]
    # ... but only as a whole: a request is atomic.
    ex2, table2 = _executor(issued=5)
    with pytest.raises(InvariantViolation, match="idempotency"):
        ex2._receipt(table2, records, _receipt(1, 1, 7), waited=False, lost_attempt=True)


def test_mode_b_receipts_must_say_visible() -> None:
    ex, table = _executor()
    with pytest.raises(InvariantViolation, match="status"):
        ex._receipt(table, [_rec("a", id=1)], _receipt(1, 0, 1), waited=True)


def test_answers_are_checked_against_the_model_at_their_watermark() -> None:
    ex, table = _executor()
    ex._receipt(table, [_rec("a", id=1), _rec("b", id=2)], _receipt(2, 0, 2), waited=False)
    one = {"snapshot_id": 3, "max_visibility_token": 1, "rows": [[1, None, None]]}
    ex._check_rows(table, "rows", one, "test")  # a prefix is right for watermark 1
    with pytest.raises(InvariantViolation, match="visibility"):
        ex._check_rows(table, "rows", dict(one, max_visibility_token=2), "test")
    doubled: dict[str, Any] = {
        "snapshot_id": 4,
        "max_visibility_token": 2,
        "rows": [[1, None, None]] * 2,
    }
    doubled["rows"].append([2, None, None])
    with pytest.raises(InvariantViolation, match="duplicates"):
        ex._check_rows(table, "rows", doubled, "test")


# -- actions and recordings ---------------------------------------------------


@pytest.mark.parametrize(
    "action",
    [
        {"do": "teleport"},
        {"do": "ingest", "table": "t"},
        {"do": "ingest", "table": "t", "records": [{"payload": {}}]},
        {"do": "kill_coordinator", "fault": "nowhere", "table": "t", "records": []},
        {"do": "kill_coordinator", "fault": A.FAULT_POINTS[0], "table": "t", "records": []},
        {"do": "query_token", "table": "t", "sql_kind": "drop"},
        {"do": "damage_file", "table": "t", "backup": "no"},
        {"do": "store_full", "table": "t", "records": []},
        "ingest",
    ],
)
def test_bad_actions_are_refused(action: Any) -> None:
    with pytest.raises(A.BadAction):
        A.validate(action)


def test_action_constructors_make_valid_json_actions() -> None:
    made = [
        A.create_table("t", [{"name": "id", "type": "BIGINT"}]),
        A.evolve_table("t", "x1", "VARCHAR"),
        A.ingest("t", [_rec("a", id=1)]),
        A.ingest_wait("t", [_rec("a", id=1)]),
        A.ingest_conflict("t", _rec("a", id=2)),
        A.query_token("t", "aggregate"),
        A.query_latest("t"),
        A.query_snapshot(3),
        A.kill_coordinator(A.FAULT_POINTS[1], "t", [_rec("b", id=3)]),
        A.kill_coordinator(),
        A.restart_api("t", [_rec("c", id=4)]),
        A.restart_api(),
        A.restart_api(signal="kill"),
        A.kill_server("t", [_rec("d", id=5)]),
        A.stall_coordinator("t", [_rec("e", id=6)]),
        A.damage_file("t"),
        A.damage_file("t", backup=False),
        A.kill_postgres(),
        A.compact(),
        A.s3_outage("hang", 1.5, "t", [_rec("f", id=7)], [_rec("g", id=8)]),
        A.store_full("t", [_rec("f", id=7)]),
    ]
    assert {a["do"] for a in made} == set(A.KINDS)
    for action in made:
        assert A.validate(json.loads(json.dumps(action))) == action
        assert A.describe(action)


def test_recordings_are_checked_on_load(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"seed": 1, "actions": [A.query_latest("t")]}))
    assert load_recording(path)["seed"] == 1
    path.write_text(json.dumps({"seed": 1}))
    with pytest.raises(ValueError, match="actions"):
        load_recording(path)
    path.write_text(json.dumps({"actions": [{"do": "nope"}]}))
    with pytest.raises(A.BadAction):
        load_recording(path)


def test_replay_of_an_unreadable_file_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("DUCKMESH_UNSAFE_BREAK", "DUCKMESH_ENABLE_FAULTS"):
        monkeypatch.delenv(name, raising=False)
    assert main(["scenario", "replay", str(tmp_path / "missing.json")]) == 2
    assert "cannot read scenario" in capsys.readouterr().err


# -- the test-only broken barrier ---------------------------------------------


def test_unsafe_break_is_refused_without_faults_enabled() -> None:
    assert load_config(environ={}).unsafe_break == ""
    with pytest.raises(ConfigError, match="DUCKMESH_UNSAFE_BREAK"):
        load_config(environ={"DUCKMESH_UNSAFE_BREAK": "skip_barrier"})
    with pytest.raises(ConfigError, match="DUCKMESH_UNSAFE_BREAK"):
        load_config(
            environ={"DUCKMESH_UNSAFE_BREAK": "skip_everything", "DUCKMESH_ENABLE_FAULTS": "1"}
        )
    armed = load_config(
        environ={"DUCKMESH_UNSAFE_BREAK": "skip_barrier", "DUCKMESH_ENABLE_FAULTS": "1"}
    )
    assert armed.unsafe_break == "skip_barrier"


@pytest.mark.parametrize("name", UNSAFE_BREAKS)
def test_each_twin_is_armed_only_with_faults_enabled(name: str) -> None:
    with pytest.raises(ConfigError, match="DUCKMESH_UNSAFE_BREAK"):
        load_config(environ={"DUCKMESH_UNSAFE_BREAK": name})
    config = load_config(environ={"DUCKMESH_UNSAFE_BREAK": name, "DUCKMESH_ENABLE_FAULTS": "1"})
    try:
        unsafe.arm(config.unsafe_break)
        assert [b for b in UNSAFE_BREAKS if unsafe.broken(b)] == [name]
    finally:
        unsafe.arm("")
    assert not any(unsafe.broken(b) for b in UNSAFE_BREAKS)


def test_serve_refuses_unsafe_break_without_faults(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DUCKMESH_UNSAFE_BREAK", "skip_barrier")
    monkeypatch.delenv("DUCKMESH_ENABLE_FAULTS", raising=False)
    assert main(["serve", "--role", "api"]) == 2
    assert "DUCKMESH_UNSAFE_BREAK" in capsys.readouterr().err


async def test_the_barrier_waits_by_default(runtime: Runtime) -> None:
    assert not runtime.queries.settings.unsafe_skip_barrier
    with pytest.raises(DuckMeshError) as info:
        await barrier.wait_for_token(
            runtime.db, runtime.bus, runtime.notifications, "default", 5, 0.2
        )
    assert info.value.error_code == "VISIBILITY_TOKEN_INVALID"


async def test_skip_barrier_answers_at_once_whatever_the_watermark(
    make_config: Callable[..., Config], dsn: str
) -> None:
    rt = build_runtime(make_config(enable_faults=True, unsafe_break="skip_barrier"), dsn=dsn)
    try:
        migrate_and_bootstrap(rt)
        assert rt.queries.settings.unsafe_skip_barrier
        with trio.fail_after(5):
            snap = await rt.queries.resolve("default", QueryRequest(sql="", min_visibility_token=5))
        assert snap is None or snap.max_visibility_token < 5
    finally:
        rt.close()


def test_under_background_load_tokens_must_still_rise() -> None:
    ex, table = _executor(issued=10)
    ex.system.load = object()  # other writers take tokens in between: gaps are allowed
    ex._receipt(table, [_rec("a", id=1)], _receipt(1, 0, 15), waited=False)
    assert ex.system.ledger == [(15, 15)]
    with pytest.raises(InvariantViolation, match="gapless and commit-ordered"):
        ex._receipt(table, [_rec("b", id=2)], _receipt(1, 0, 15), waited=False)


def _load(writers: int = 2) -> Load:
    return Load(types.SimpleNamespace(ledger=[]), writers=writers)  # type: ignore[arg-type]


def test_the_load_model_wants_every_acknowledged_id_exactly_once() -> None:
    load = _load()
    lower, upper = {1: 3, 2: 0}, {1: 5, 2: 10}
    first = SPAN + 1

    def rows(*found: tuple[int, int, int, int, int]) -> dict[str, Any]:
        return {"snapshot_id": 7, "rows": [list(r) for r in found]}

    assert load._check_append(rows((1, 4, 4, first, first + 3)), lower, upper) == []
    dup = load._check_append(rows((1, 4, 3, first, first + 2)), lower, upper)
    assert dup[0][0] == "idempotency (no duplicates)"
    missing = load._check_append(rows((1, 2, 2, first, first + 1)), lower, upper)
    assert missing[0][0] == "visibility"
    gap = load._check_append(rows((1, 3, 3, first, first + 3)), lower, upper)
    assert gap[0][0] == "visibility"
    phantom = load._check_append(rows((1, 6, 6, first, first + 5)), lower, upper)
    assert phantom[0][0] == "snapshot consistency"


def test_the_load_model_wants_keyed_rows_equal_to_an_acknowledged_state() -> None:
    load = _load(1)
    states = {1: [{100: 5}, {100: 6, 101: 1}]}
    ok = {"snapshot_id": 3, "rows": [[100, 1, 6], [101, 1, 1]]}
    assert load._check_keyed(ok, states) == []
    stale_key = {"snapshot_id": 3, "rows": [[100, 1, 6]]}
    assert load._check_keyed(stale_key, states)[0][0] == "visibility"
