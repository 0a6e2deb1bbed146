"""Progress of long CLI operations: a rich bar on a terminal, plain lines
(no escape codes) otherwise; the bench table flags a missed pace."""

from __future__ import annotations

import io

import pytest

from duckmesh.cli import progress
from duckmesh.cli.progress import ProgressBar
from duckmesh_testing.bench.load import print_table
from tests.cli.helpers import run


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar() -> None:
    out = Terminal()
    with ProgressBar("replaying 10 events", 10, out=out) as bar:
        bar.advance_to(5)
        bar.complete()
    text = out.getvalue()
    assert "replaying 10 events" in text
    assert "━" in text  # rich's bar
    assert "10/10" in text


def test_a_pipe_gets_plain_lines() -> None:
    out = io.StringIO()
    with ProgressBar("loading", 100, out=out, unit="rows") as bar:
        bar.advance_to(10, line="chunk 0: 10 rows")
        bar.advance_to(20)  # within PLAIN_EVERY_S of the last line: nothing
        bar.complete()
    assert out.getvalue().splitlines() == ["chunk 0: 10 rows", "loading: 100/100 rows (100%)"]


def test_a_pipe_gets_the_final_count_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)
    out = io.StringIO()
    with ProgressBar("demo", 4, out=out) as bar:
        bar.advance_to(2)
        bar.advance_to(4)
    assert out.getvalue().splitlines() == ["demo: 2/4 (50%)", "demo: 4/4 (100%)"]


def test_a_failed_operation_ends_without_a_final_count() -> None:
    out = io.StringIO()

    def fail() -> None:
        with ProgressBar("loading", 100, out=out) as bar:
            bar.advance_to(10, line="chunk 0")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        fail()
    assert out.getvalue() == "chunk 0\n"


@pytest.mark.usefixtures("catalog")
def test_replay_progress_in_a_pipe_is_plain(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "tenants", "create", "acme")[0] == 0
    code, out, err = run(capsys, "replay", "rebuild")
    assert code == 0
    assert out.startswith("rebuilt projections from ")
    assert "\r" not in err
    assert "\x1b" not in err
    assert err.splitlines()[-1].startswith("replaying ")


def _row(name: str, rate: float, target: int | None, missed: bool) -> dict[str, object]:
    latency = {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0}
    return {
        "scenario": name,
        "records_per_s": rate,
        "target_records_per_s": target,
        "pace_missed": missed,
        "ack": latency,
        "write_to_visible": latency,
        "strict_query": latency,
        "errors": 0,
    }


def test_the_bench_table_flags_a_missed_pace(capsys: pytest.CaptureFixture[str]) -> None:
    print_table([_row("steady", 1200.0, 2000, True), _row("burst", 9000.0, None, False)])
    lines = capsys.readouterr().out.splitlines()
    (steady,) = [line for line in lines if line.startswith("steady ")]
    (burst,) = [line for line in lines if line.startswith("burst ")]
    assert steady.endswith("MISSED PACE")
    assert "MISSED" not in burst
    assert "steady: MISSED PACE: 1,200 of the 2,000 records/s asked for" in "\n".join(lines)
