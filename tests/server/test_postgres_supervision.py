"""Issue 15, the embedded Postgres as a supervised child, against real
``duckmesh serve`` process groups on an embedded catalog: a Postgres killed
with -9 during ingest is restarted and the server recovers by itself (every
acknowledged record visible exactly once); a Postgres left behind by a
SIGKILLed server does not outlive the next server on that directory."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from duckmesh.files import POSTGRES_DIR
from duckmesh_testing.procs import free_port, server_env, spawn_serve, stop
from tests.fixtures import BOOTSTRAP_KEY, EVENTS, REPO

HEADERS = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # The embedded Postgres puts its Unix socket here: keep the path short.
    path = Path(tempfile.mkdtemp(prefix="dmpg"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Group:
    """``duckmesh serve`` (the default process group) on an embedded catalog."""

    def __init__(self, data_dir: Path, **settings: str) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = server_env(
            DUCKMESH_DATA_DIR=str(data_dir),
            DUCKMESH_HTTP_PORT=str(self.port),
            DUCKMESH_BOOTSTRAP_API_KEY=BOOTSTRAP_KEY,
            DUCKMESH_LOG_FORMAT="json",
            DUCKMESH_API_WORKERS="1",
            DUCKMESH_FLUSH_INTERVAL_MS="100",
            **settings,
        )
        self.log = data_dir.parent / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = spawn_serve(None, self.env, self.log, cwd=REPO)
        self.wait_ready(60)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.base + "/v1/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready within {timeout} s:\n{self.log.read_text()}")

    def postmaster(self) -> int:
        return int((self.data_dir / POSTGRES_DIR / "postmaster.pid").read_text().split()[0])


def _gone(pids: list[int], timeout: float = 10) -> list[int]:
    """The pids still alive after waiting up to ``timeout`` for them to exit
    (a stopped postmaster is reaped by its parent a moment later)."""
    deadline = time.monotonic() + timeout
    while any(psutil.pid_exists(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if psutil.pid_exists(p)]


def _postgres_of(data_dir: Path) -> list[int]:
    """Pids of every postgres process serving ``data_dir``."""
    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "postgres" in cmd and str(data_dir) in cmd:
            pids.append(proc.pid)
    return pids


class Writer:
    """Ingests one record per request, retrying a refused one with the same key
    (as a client would), and remembers which ids were acknowledged."""

    def __init__(self, base: str) -> None:
        self.client = httpx.Client(base_url=base, headers=HEADERS, timeout=30)
        self.acked: set[int] = set()
        self.failures = 0
        self.token = 0
        self.done = threading.Event()
        self.next_id = 0

    def write(self, n: int) -> bool:
        try:
            r = self.client.post(
                "/v1/ingest/events",
                json={"records": [{"idempotency_key": f"k{n}", "payload": {"id": n}}]},
            )
        except httpx.TransportError:
            return False
        if r.status_code != 200:
            return False
        self.acked.add(n)
        self.token = max(self.token, r.json()["max_visibility_token"])
        return True

    def run(self) -> None:
        while not self.done.is_set():
            if self.write(self.next_id):
                self.next_id += 1
            else:
                self.failures += 1
                time.sleep(0.05)


@pytest.mark.slow
def test_postgres_killed_during_ingest_is_restarted_and_nothing_is_lost(
    short_dir: Path,
) -> None:
    group = Group(short_dir / "data")
    group.start()
    assert group.proc is not None
    try:
        with httpx.Client(base_url=group.base, headers=HEADERS, timeout=30) as client:
            assert client.post("/v1/tables", json=EVENTS).status_code == 201
        writer = Writer(group.base)
        thread = threading.Thread(target=writer.run)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while len(writer.acked) < 20:
                assert time.monotonic() < deadline, "ingest never got going"
                time.sleep(0.05)
            old = group.postmaster()
            psutil.Process(old).send_signal(signal.SIGKILL)
            before = len(writer.acked)
            # Old code: nothing restarted Postgres and the group gave up.
            deadline = time.monotonic() + 60
            while len(writer.acked) < before + 20:
                assert group.proc.poll() is None, "exited:\n" + group.log.read_text()[-5000:]
                assert time.monotonic() < deadline, "no recovery:\n" + group.log.read_text()[-5000:]
                time.sleep(0.1)
        finally:
            writer.done.set()
            thread.join(60)
            writer.client.close()
        assert group.postmaster() != old
        group.wait_ready(30)
        with httpx.Client(base_url=group.base, headers=HEADERS, timeout=60) as client:
            r = client.post(
                "/v1/query",
                json={
                    "sql": "SELECT id, count(*) FROM events GROUP BY id ORDER BY id",
                    "min_visibility_token": writer.token,
                    "consistency_timeout_ms": 30_000,
                    "row_limit": 100_000,
                },
            )
            assert r.status_code == 200, r.text
            rows = r.json()["rows"]
            ready = client.get("/v1/ready").json()
        counts = {row[0]: row[1] for row in rows}
        assert set(counts) >= writer.acked  # every acknowledged record is visible
        assert set(counts.values()) == {1}  # exactly once
        postgres = next(p for p in ready["processes"] if p["name"] == "postgres")
        assert postgres["restarts"] >= 1
        assert postgres["pid"] == group.postmaster()
    finally:
        assert stop(group.proc) == 0, "stop:\n" + group.log.read_text()[-5000:]
    assert _gone(_postgres_of(group.data_dir)) == [], "Postgres left running"


@pytest.mark.slow
def test_postgres_left_by_a_killed_server_is_stopped_by_the_next(short_dir: Path) -> None:
    group = Group(short_dir / "data")
    group.start()
    assert group.proc is not None
    left = group.postmaster()
    children = [c for c in psutil.Process(group.proc.pid).children() if c.pid != left]
    group.proc.kill()  # the root dies; its children follow, Postgres stays
    group.proc.wait(10)
    psutil.wait_procs(children, timeout=30)
    assert psutil.pid_exists(left)
    group.start()  # adopts the surviving Postgres
    with httpx.Client(base_url=group.base, headers=HEADERS, timeout=30) as client:
        assert client.post("/v1/tables", json=EVENTS).status_code == 201
    assert stop(group.proc) == 0, group.log.read_text()[-5000:]
    assert _gone([left]) == [], "the adopted Postgres was left running"
    assert _gone(_postgres_of(group.data_dir)) == [], "Postgres left running"
