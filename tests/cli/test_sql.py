"""``duckmesh sql`` against a real server: interactively through a
pseudo-terminal (pexpect), and with ``-c`` as a pipe's first stage."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pexpect
import pyarrow as pa
import trio

from duckmesh_testing.procs import server_env
from tests.fixtures import BOOTSTRAP_KEY, EVENTS, REPO, LiveServer

ROWS = [{"id": i, "kind": f"k{i % 2}", "value": i / 2} for i in range(5)]


async def _prepared(server: LiveServer, tmp_path: Path) -> dict[str, str]:
    await server.create_table(EVENTS)
    records = [{"idempotency_key": f"e{r['id']}", "payload": r} for r in ROWS]
    r = await server.ingest("events", records, wait_for_visibility=True)
    assert r.status_code == 200, r.text
    return server_env(
        DUCKMESH_URL=server.base_url,
        DUCKMESH_API_KEY=BOOTSTRAP_KEY,
        DUCKMESH_DATA_DIR=str(tmp_path / "unused"),
        HOME=str(tmp_path),
        TERM="dumb",
    )


def _sql(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "duckmesh.cli.main", "sql", *argv],
        env=env,
        cwd=REPO,
        capture_output=True,
        timeout=120,
        check=False,
    )


async def test_one_statement_in_every_format_feeds_a_pipe(
    server: LiveServer, tmp_path: Path
) -> None:
    env = await _prepared(server, tmp_path)
    query = "select id, kind, value from events order by id"

    done: dict[str, subprocess.CompletedProcess[bytes]] = {}

    async def run(fmt: str) -> None:
        done[fmt] = await trio.to_thread.run_sync(lambda: _sql(env, "-c", query, "--format", fmt))

    async with trio.open_nursery() as nursery:
        for fmt in ("csv", "json", "arrow", "table"):
            nursery.start_soon(run, fmt)
    for result in done.values():
        assert result.returncode == 0, result.stderr
        assert b"5 rows" in result.stderr  # timing goes to stderr, not into the pipe
    parsed = list(csv.DictReader(io.StringIO(done["csv"].stdout.decode())))
    assert [(int(r["id"]), r["kind"], float(r["value"])) for r in parsed] == [
        (r["id"], r["kind"], r["value"]) for r in ROWS
    ]
    lines = done["json"].stdout.decode().splitlines()
    assert [json.loads(line) for line in lines] == ROWS
    table = pa.ipc.open_stream(done["arrow"].stdout).read_all()
    assert table.to_pylist() == ROWS
    text = done["table"].stdout.decode().splitlines()
    assert text[0].split() == ["id", "|", "kind", "|", "value"]
    assert len(text) == 2 + len(ROWS)

    refused = await trio.to_thread.run_sync(lambda: _sql(env, "-c", "select * from nowhere"))
    assert refused.returncode == 1
    assert refused.stdout == b""
    assert b"SQL_ERROR" in refused.stderr


async def test_interactive_shell_through_a_terminal(server: LiveServer, tmp_path: Path) -> None:
    env = await _prepared(server, tmp_path)
    history = tmp_path / "history"

    def session() -> None:
        shell = pexpect.spawn(
            sys.executable,
            ["-m", "duckmesh.cli.main", "sql", "--history-file", str(history)],
            env=env,
            cwd=str(REPO),
            encoding="utf-8",
            timeout=60,
        )
        try:
            shell.expect_exact("duckmesh> ")
            shell.sendline("\\d")
            shell.expect(r"events\s+\|\s+3\s+\|\s+\|\s+5")
            shell.expect_exact("duckmesh> ")
            shell.sendline("\\d events")
            shell.expect(r"id\s+\|\s+BIGINT\s+\|\s+no")
            shell.expect_exact("duckmesh> ")
            # A statement over two lines runs at its ';'.
            shell.sendline("select kind, count(*) as n from events")
            shell.expect_exact("..> ")
            shell.sendline("group by kind order by kind;")
            shell.expect(r"k0\s+\|\s+3")
            shell.expect(r"k1\s+\|\s+2")
            shell.expect(r"\(2 rows, snapshot \d+, [0-9.]+ ms\)")
            shell.expect_exact("duckmesh> ")
            shell.sendline("select * from nowhere;")
            shell.expect("ERROR SQL_ERROR")
            shell.expect_exact("duckmesh> ")
            shell.sendline("\\q")
            shell.expect(pexpect.EOF)
        finally:
            shell.close()
        assert shell.exitstatus == 0

    await trio.to_thread.run_sync(session)
    assert "group by kind order by kind;" in history.read_text()
