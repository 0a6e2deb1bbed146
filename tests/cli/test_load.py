"""``duckmesh load``: a real CLI process loads a CSV in chunks through the real
server; killed half-way and rerun, every row is there exactly once and the
rerun reports the chunks the server already held as duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.fixtures import BOOTSTRAP_KEY, LiveServer, StartApp

ROWS = 30_000
CHUNK = 250  # 120 chunks: a kill after the 4th lands long before the last
TABLE = {
    "name": "big",
    "columns": [
        {"name": "id", "type": "BIGINT", "nullable": False},
        {"name": "name", "type": "VARCHAR"},
        {"name": "score", "type": "DOUBLE"},
        {"name": "at", "type": "TIMESTAMP"},
    ],
}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUCKMESH_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return env


def _command(server: LiveServer, path: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "duckmesh.cli.main",
        "load",
        "big",
        str(path),
        "--chunk-rows",
        str(CHUNK),
        "--url",
        server.base_url,
        "--api-key",
        BOOTSTRAP_KEY,
        *extra,
    ]


def _write_csv(path: Path) -> None:
    with open(path, "w") as fh:
        fh.write("id,name,score,at\n")
        for i in range(ROWS):
            fh.write(f'{i},"name, {i}",{i / 7},2024-01-01T00:00:{i % 60:02d}\n')


async def _count(server: LiveServer, token: int) -> list[int]:
    q = await server.query(
        "select count(*), count(distinct id), min(id), max(id) from big",
        min_visibility_token=token,
    )
    assert q.status_code == 200, q.text
    row: list[int] = q.json()["rows"][0]
    return row


async def test_load_killed_half_way_then_rerun(server: LiveServer, tmp_path: Path) -> None:
    await server.create_table(TABLE)
    path = tmp_path / "big.csv"
    _write_csv(path)

    seen: list[str] = []
    proc = await trio.lowlevel.open_process(
        _command(server, path), stdout=subprocess.PIPE, env=_env()
    )
    try:
        assert proc.stdout is not None
        buffer = b""
        while sum("chunk" in line for line in seen) < 4:
            data = await proc.stdout.receive_some()
            assert data, f"load ended early: {seen}"
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            seen.extend(line.decode() for line in lines)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()
    assert proc.returncode == -signal.SIGKILL
    sent_before = await trio.to_thread.run_sync(server.rt.bus.latest_token, "default")
    assert 4 * CHUNK <= sent_before < ROWS  # half-way: some chunks, not all

    rerun = await trio.run_process(
        [*_command(server, path), "--wait"], capture_stdout=True, env=_env(), check=False
    )
    out = rerun.stdout.decode()
    assert rerun.returncode == 0, out
    summary = out.strip().splitlines()[-1]
    assert summary.startswith(f"loaded {ROWS} rows in {ROWS // CHUNK} chunk(s)"), summary
    assert f"{ROWS - sent_before} new, {sent_before} duplicates" in summary, summary
    assert await _count(server, ROWS) == [ROWS, ROWS, 0, ROWS - 1]


@pytest.fixture
async def impatient_server(start_app: StartApp) -> LiveServer:
    """Waits for visibility time out at once (504), so --wait has to retry."""
    return await start_app(consistency_timeout_ms=0)


async def test_wait_retried_after_a_consistency_timeout_counts_rows_as_new(
    impatient_server: LiveServer, tmp_path: Path
) -> None:
    server = impatient_server
    await server.create_table(TABLE)
    path = tmp_path / "small.csv"
    path.write_text("id,name,score,at\n1,a,1.5,2024-01-01T00:00:00\n2,b,2.5,\n")
    done = await trio.run_process(
        [*_command(server, path), "--wait"], capture_stdout=True, env=_env(), check=False
    )
    out = done.stdout.decode()
    assert done.returncode == 0, out
    assert "2 new, 0 duplicates" in out.strip().splitlines()[-1], out
