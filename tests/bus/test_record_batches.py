"""How a flush of JSON records is cut into stored batches (ADR 0014): one
run per table and schema version, in token order, bounded in rows and bytes."""

from __future__ import annotations

from duckmesh.bus import IngestRecord
from duckmesh.bus.record_batches import runs


def rec(table: str, key: str, payload: str = "{}", version: int = 1) -> IngestRecord:
    return IngestRecord(table, key, "insert", payload, b"h", None, version)


def shape(out: list[tuple[int, list[IngestRecord]]]) -> list[tuple[int, list[str]]]:
    return [(first, [r.idempotency_key for r in run]) for first, run in out]


def test_runs_follow_table_and_version_changes_in_token_order() -> None:
    new = [rec("a", "1"), rec("a", "2"), rec("b", "3"), rec("a", "4"), rec("a", "5", version=2)]
    assert shape(runs(new)) == [(1, ["1", "2"]), (3, ["3"]), (4, ["4"]), (5, ["5"])]


def test_runs_are_bounded_in_rows_and_payload_bytes() -> None:
    new = [rec("a", str(i), "x" * 10) for i in range(5)]
    assert shape(runs(new, max_rows=2)) == [(1, ["0", "1"]), (3, ["2", "3"]), (5, ["4"])]
    assert shape(runs(new, max_bytes=25)) == [(1, ["0", "1"]), (3, ["2", "3"]), (5, ["4"])]
    # A record bigger than the bound still goes, alone.
    assert shape(runs([rec("a", "big", "x" * 99)], max_bytes=25)) == [(1, ["big"])]
