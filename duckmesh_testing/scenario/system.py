"""A real DuckMesh for scenarios: one Postgres, an API process, a coordinator process.

The Postgres is ``DUCKMESH_TEST_DSN`` (a fresh database is created in it and
dropped at the end) or an embedded server in a short temporary directory.
The API (``serve --role api``) and the coordinator (``serve --role
coordinator``) are separate ``python -m duckmesh.cli.main`` processes sharing
the catalog and the data directory, so the coordinator can be SIGKILLed, or
made to kill itself at a named fault point, while the API keeps answering.

With ``storage="s3"`` the data files live in a bucket of an S3-compatible
test server (moto, a real subprocess behind a relay the harness can cut:
:mod:`duckmesh_testing.s3server`), and every process has its own object
cache directory, as on separate hosts: a file is local only to the
coordinator that wrote it and the API that downloaded it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.conninfo import make_conninfo

from duckmesh.embedded import EmbeddedPostgres
from duckmesh_testing.procs import free_port, server_env, spawn_serve, stop
from duckmesh_testing.s3server import S3TestServer

API_KEY = "dmk_scenario_aIxJtXU_kXAtgDCV16n6-RSiZ8LpM1tvF7-hL081"  # public: local runs only
# Settings every scenario process gets (the brief of issue 8): short leases so
# a killed coordinator's work is reclaimed quickly, frequent flushes.
BASE_ENV = {
    "DUCKMESH_BOOTSTRAP_API_KEY": API_KEY,
    "DUCKMESH_LEASE_MS": "1500",
    "DUCKMESH_FLUSH_INTERVAL_MS": "100",
    "DUCKMESH_LOG_FORMAT": "json",
    "DUCKMESH_LOG_LEVEL": "warning",
    # Scenario tables are small: let compaction merge as soon as there are two files.
    "DUCKMESH_COMPACTION_MIN_FILES": "2",
    # Storage housekeeping races every step (the maintenance process): compaction,
    # snapshot expiry and GC run often, with short retention and a short grace.
    "DUCKMESH_COMPACTION_INTERVAL_MS": "1000",
    "DUCKMESH_MAINTENANCE_INTERVAL_MS": "500",
    "DUCKMESH_SNAPSHOT_RETAIN_COUNT": "5",
    "DUCKMESH_SNAPSHOT_RETAIN_MS": "5000",
    # Longer than a commit takes from writing its file to publishing it (the
    # window is what protects those files), even through a coordinator stall.
    "DUCKMESH_GC_SAFETY_WINDOW_MS": "10000",
}
# The snapshot's own time and its event's differ by a transaction's length.
EXPIRY_SLACK_S = 0.5
# Variables of the caller's environment handed on to the server processes
# (so a test can run the runner against a deliberately broken build).
FORWARDED_ENV = ("DUCKMESH_UNSAFE_BREAK", "DUCKMESH_ENABLE_FAULTS")
STORAGES = ("local", "s3")
S3_BUCKET = "duckmesh-scenario"


class HarnessError(RuntimeError):
    """The system under test could not be started or driven (not a violation)."""


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    return {k: env[k] for k in FORWARDED_ENV if env.get(k)}


class Process:
    """One ``duckmesh serve --role ...`` child process with its own log file."""

    def __init__(self, role: str, env: dict[str, str], log_path: Path) -> None:
        self.role = role
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_offset = 0  # where this start's log begins

    @property
    def port(self) -> int:
        return int(self.env["DUCKMESH_HTTP_PORT"])

    def start(self, extra_env: Mapping[str, str] | None = None) -> None:
        env = dict(self.env, **(extra_env or {}))
        self.starts += 1
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- start #{self.starts} {dict(extra_env or {})}\n".encode())
        self.proc = spawn_serve(self.role, env, self.log_path)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def pause(self) -> None:
        """SIGSTOP: the process (its lease heartbeat too) stalls until :meth:`resume`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def log_since_start(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self.log_offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def terminate(self, timeout: float = 30) -> int | None:
        """SIGTERM and wait; None if it did not stop in time (then it is killed)."""
        if self.proc is None:
            return None
        return stop(self.proc, timeout)

    def wait_exit(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class System:
    """Postgres + API process + coordinator process, started once and driven over HTTP.

    ``server_env`` is added to every server process's environment (for example
    ``DUCKMESH_UNSAFE_BREAK``). ``issued_token`` is the last token the tenant
    was issued as far as the scenario knows and ``max_watermark`` the highest
    watermark any answer showed; both are system-wide, so they carry over
    from one scenario to the next on a shared system.
    """

    def __init__(
        self,
        *,
        server_env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
        keep: bool = False,
        storage: str = "local",
    ) -> None:
        if storage not in STORAGES:
            raise HarnessError(f"storage must be one of {STORAGES}, got {storage!r}")
        self.storage = storage
        self.s3: S3TestServer | None = None  # started by start() with storage="s3"
        self._caches = 0
        self.server_env = dict(server_env or {})
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="dmscn"))
        self.keep = keep
        self.dsn = ""
        self._embedded: EmbeddedPostgres | None = None
        self._pg_root: Path | None = None
        self._admin_dsn = ""
        self._dbname = ""
        self.api: Process | None = None
        self.coordinator: Process | None = None
        self.client: httpx.Client | None = None
        self.issued_token: int | None = None
        self.max_watermark = 0
        self.started = False
        # Fresh token ranges acknowledged (scenarios and background load) after
        # ``ledger_base``, the last token issued when the system started.
        self.ledger: list[tuple[int, int]] = []
        self.ledger_base = 0
        self.load: Any = None  # the background load, when one runs
        self.maintenance: Process | None = None  # compaction, expiry and GC throughout
        self.pinned: set[int] = set()  # snapshots the scenarios pinned (never expire)

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> System:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _postgres(self) -> str:
        given = os.environ.get("DUCKMESH_TEST_DSN")
        if given:
            self._admin_dsn = given
            self._dbname = f"dm_scn_{secrets.token_hex(5)}"
            with psycopg.connect(given, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {self._dbname}")
            return make_conninfo(given, dbname=self._dbname)
        # A short path: the Unix socket lives in the data directory (108-byte limit).
        self._pg_root = Path(tempfile.mkdtemp(prefix="dmsp"))
        self._embedded = EmbeddedPostgres(self._pg_root)
        dsn = self._embedded.start()
        with psycopg.connect(dsn, autocommit=True) as conn:
            # Speed only: this server is thrown away and the machine does not
            # crash. Commits still reach the OS before they return
            # (synchronous_commit stays on), so a SIGKILL of Postgres itself
            # (``kill_postgres``) loses nothing acknowledged.
            conn.execute("ALTER SYSTEM SET fsync = off")
            conn.execute("SELECT pg_reload_conf()")
        return dsn

    def env_for(self, role: str) -> dict[str, str]:
        env = server_env(**BASE_ENV)
        env.update(
            DUCKMESH_CATALOG_DSN=self.dsn,
            DUCKMESH_DATA_DIR=str(self.workdir / "data"),
            DUCKMESH_HTTP_PORT=str(free_port()),
        )
        env.update(self.storage_env(role))
        env.update(self.server_env)
        return env

    def storage_env(self, role: str | None = None) -> dict[str, str]:
        """The object-store settings of a process: none for local files; with
        S3 the bucket, and for a server process (``role``) a cache directory
        of its own (every process is a host with its own disk)."""
        if self.s3 is None:
            return {}
        env = self.s3.store_env(S3_BUCKET)
        if role is not None:
            self._caches += 1
            cache = self.workdir / f"cache-{role}-{self._caches}"
            env["DUCKMESH_OBJECT_CACHE_DIR"] = str(cache)
        return env

    def _start_s3(self) -> None:
        self.s3 = S3TestServer(self.workdir / "s3.log")
        self.s3.create_bucket(S3_BUCKET)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dsn = self._postgres()
        if self.storage == "s3":
            self._start_s3()
        self.api = Process("api", self.env_for("api"), self.workdir / "api.log")
        self.coordinator = Process(
            "coordinator", self.env_for("coordinator"), self.workdir / "coordinator.log"
        )
        self.start_api()
        self.start_coordinator()
        self.maintenance = Process(
            "maintenance", self.env_for("maintenance"), self.workdir / "maintenance.log"
        )
        self.maintenance.start()
        self.started = True
        self.sync_tokens()
        self.ledger_base = self.issued_token or 0

    def stop(self, *, failed: bool = False) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        for proc in (self.api, self.coordinator, self.maintenance):
            if proc is not None:
                proc.terminate(20)
        if self.s3 is not None:
            self.s3.stop()
            self.s3 = None
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None
        if self._pg_root is not None:
            shutil.rmtree(self._pg_root, ignore_errors=True)
            self._pg_root = None
        if self._dbname:
            with psycopg.connect(self._admin_dsn, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {self._dbname} WITH (FORCE)")
            self._dbname = ""
        if self._own_workdir and not (self.keep or failed):
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.started = False

    # -- processes ---------------------------------------------------------

    def start_api(self, timeout: float = 60) -> None:
        assert self.api is not None
        self.api.start()
        if self.client is not None:
            self.client.close()
        self.client = self.new_client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.api.alive():
                raise HarnessError(
                    f"API process exited with {self.api.exit_code()}:\n{self.api.log_tail()}"
                )
            try:
                if self.client.get("/v1/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise HarnessError(f"API not ready within {timeout}s:\n{self.api.log_tail()}")

    def new_client(self, timeout: float = 90) -> httpx.Client:
        assert self.api is not None
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.api.port}",
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=timeout,
        )

    def start_coordinator(self, extra_env: Mapping[str, str] | None = None) -> None:
        assert self.coordinator is not None
        self.coordinator.start(extra_env)

    @property
    def owns_postgres(self) -> bool:
        return self._embedded is not None

    def kill_postgres(self, timeout: float = 60) -> None:
        """SIGKILL the embedded Postgres's postmaster and start it again (crash
        recovery); the DuckMesh processes must reconnect by themselves."""
        if self._embedded is None:
            raise HarnessError("kill_postgres needs the embedded Postgres (no DUCKMESH_TEST_DSN)")
        pid = self._embedded.postmaster_pid()
        if pid is None:
            raise HarnessError("the embedded Postgres is not running")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        # Its orphaned backends hold the shared memory until they notice: a
        # restart fails until then, so the supervisor's part is to retry.
        while time.monotonic() < deadline:
            if self._embedded.postmaster_pid() is None:
                self._embedded.ensure_running()
            try:
                psycopg.connect(self.dsn, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.2)
        raise HarnessError(f"the embedded Postgres did not come back within {timeout}s")

    def second_coordinator(self) -> Process:
        """Another coordinator process (its own port and log), not yet started."""
        return Process(
            "coordinator", self.env_for("coordinator"), self.workdir / "coordinator-b.log"
        )

    def _catalog_row(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        """One row of a catalog query, on a connection of its own (autocommit)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(sql, params).fetchone()

    def db_now(self) -> Any:
        row = self._catalog_row("SELECT now()")
        assert row is not None
        return row[0]

    def claimed_since(self, since: Any) -> bool:
        """Whether a coordinator claimed (or renewed the lease of) a scope with
        records to commit after ``since`` (a database time): it is committing.
        A lease outlives its ack, so a live lease alone would not say that."""
        lease_ms = int(BASE_ENV["DUCKMESH_LEASE_MS"])
        row = self._catalog_row(
            "SELECT count(*) FROM bus_scope s JOIN bus_token_counter c"
            " ON c.tenant_id = s.scope WHERE s.owner IS NOT NULL"
            " AND s.lease_until > %s + make_interval(secs => %s)"
            " AND s.acked_token < c.last_token",
            (since, lease_ms / 1000),
        )
        return row is not None and int(row[0]) > 0

    def event_position(self) -> int:
        row = self._catalog_row("SELECT coalesce(max(position), 0) FROM event_log")
        return int(row[0]) if row is not None else 0

    def stale_publications(self, since: int) -> list[str]:
        """Commits published after ``since`` under a lease fence lower than an
        earlier commit's: a fenced-out coordinator got its publish through."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT stream, (payload->>'snapshot_id')::bigint, (payload->>'fence')::bigint"
                " FROM event_log WHERE position > %s AND event_type = 'SnapshotPublished'"
                " AND payload->>'kind' = 'commit' AND payload->>'fence' IS NOT NULL"
                " ORDER BY position",
                (since,),
            ).fetchall()
        highest: dict[str, tuple[int, int]] = {}
        stale: list[str] = []
        for stream, snapshot_id, fence in rows:
            prior = highest.get(stream)
            if prior is not None and fence < prior[1]:
                stale.append(
                    f"snapshot {snapshot_id} published with fence {fence} after snapshot"
                    f" {prior[0]} with fence {prior[1]}"
                )
            elif prior is None or fence > prior[1]:
                highest[stream] = (snapshot_id, fence)
        return stale

    def visible_watermark(self) -> int:
        r = self.http.get("/v1/lag")
        if r.status_code != 200:
            raise HarnessError(f"GET /v1/lag answered {r.status_code}: {r.text}")
        return int(r.json()["visible_watermark"])

    def ensure_running(self) -> None:
        """Restart whatever is down (after an aborted scenario on a shared system)."""
        assert self.api is not None
        assert self.coordinator is not None
        if not self.api.alive():
            self.start_api()
        if not self.coordinator.alive():
            self.start_coordinator()
        if self.maintenance is not None and not self.maintenance.alive():
            self.maintenance.start()

    @property
    def http(self) -> httpx.Client:
        assert self.client is not None, "system not started"
        return self.client

    # -- catalog facts -----------------------------------------------------

    def sync_tokens(self) -> None:
        """Learn the tenant's last issued token and watermark from ``GET /v1/lag``."""
        r = self.http.get("/v1/lag")
        if r.status_code != 200:
            raise HarnessError(f"GET /v1/lag answered {r.status_code}: {r.text}")
        body: dict[str, Any] = r.json()
        self.issued_token = int(body["latest_token"])
        self.max_watermark = max(self.max_watermark, int(body["visible_watermark"]))

    def check_ledger(self) -> str | None:
        """Every token issued since the start was acknowledged exactly once:
        the acknowledged ranges tile ``ledger_base+1..latest`` (None) or what
        is wrong."""
        r = self.http.get("/v1/lag")
        latest = int(r.json()["latest_token"])
        expect = self.ledger_base + 1
        for first, last in sorted(self.ledger):
            if first != expect:
                what = "overlap" if first < expect else "gap"
                return f"token range {first}..{last} after {expect - 1}: a {what}"
            expect = last + 1
        if expect - 1 != latest:
            return f"the acknowledged ranges end at {expect - 1}, the tenant issued {latest}"
        return None

    def repair(self, table: str, backup: Path, timeout: float = 120) -> tuple[int, str]:
        """``duckmesh repair TABLE --from-backup DIR``: (exit code, output)."""
        return self._cli(["repair", table, "--from-backup", str(backup)], timeout)

    def repair_without_backup(self, table: str, timeout: float = 120) -> tuple[int, str]:
        """``duckmesh repair TABLE --json``: drops the damaged files (exit code, output)."""
        return self._cli(["repair", table, "--json"], timeout)

    def backfill(self, table: str, timeout: float = 120) -> tuple[int, str]:
        """``duckmesh backfill TABLE --json`` (from the bus): (exit code, output)."""
        return self._cli(["backfill", table, "--json"], timeout)

    def expiry_refused(self, snapshot_id: int, seen_at: float) -> str | None:
        """Why snapshot ``snapshot_id`` must not have expired yet, or None when
        docs/API.md allows it: not pinned, not the latest nor among the newest
        ``DUCKMESH_SNAPSHOT_RETAIN_COUNT``, older than ``DUCKMESH_SNAPSHOT_RETAIN_MS``
        (as the servers got them: ``--server-env`` may change both).
        ``seen_at`` (``time.time()``) is when an answer showed it: it was
        created no later, so an age past the limit since then settles the age."""
        if snapshot_id in self.pinned:
            return "it is pinned"
        count = int(self.setting("DUCKMESH_SNAPSHOT_RETAIN_COUNT"))
        r = self.http.get("/v1/snapshots", params={"limit": count})
        if r.status_code != 200:
            raise HarnessError(f"GET /v1/snapshots answered {r.status_code}: {r.text}")
        newest = [int(s["snapshot_id"]) for s in r.json()["snapshots"]]
        if newest and snapshot_id >= min(newest):
            return f"it is among the newest {count} snapshots {newest} (the latest included)"
        retain_s = int(self.setting("DUCKMESH_SNAPSHOT_RETAIN_MS")) / 1000
        if time.time() - seen_at >= retain_s:
            return None
        # Seen recently: its own creation time decides (the publish event keeps it).
        row = self._catalog_row(
            "SELECT extract(epoch FROM now() - recorded_at) FROM event_log"
            " WHERE stream = 'snapshots:default' AND version = %s",
            (snapshot_id,),
        )
        if row is None:
            return None  # archived with the old events: long expired
        if float(row[0]) < retain_s - EXPIRY_SLACK_S:
            return f"it was published {float(row[0]):.1f}s ago, under the {retain_s:g}s retained"
        return None

    def snapshot_live(self, snapshot_id: int) -> bool:
        """The catalog's word, not the API's (whose lookups are cached): the
        snapshot exists and has not expired."""
        row = self._catalog_row(
            "SELECT expired_at IS NULL FROM snapshot"
            " WHERE tenant_id = 'default' AND snapshot_id = %s",
            (snapshot_id,),
        )
        return row is not None and bool(row[0])

    def setting(self, name: str) -> str:
        """A server setting as the processes got it: ``server_env`` over ``BASE_ENV``."""
        return self.server_env.get(name, BASE_ENV[name])

    def object_path(self, key: str) -> Path:
        """Where the local object store keeps ``key`` (``DUCKMESH_DATA_DIR/objects``)."""
        return self.workdir / "data" / "objects" / key

    def replay_verify(self, timeout: float = 300) -> tuple[int, str]:
        """``duckmesh replay verify`` against this catalog: (exit code, output)."""
        return self._cli(["replay", "verify"], timeout)

    def _cli(self, args: list[str], timeout: float) -> tuple[int, str]:
        """One ``duckmesh`` command against this catalog and data directory:
        (exit code, output)."""
        env = server_env(
            DUCKMESH_CATALOG_DSN=self.dsn,
            DUCKMESH_DATA_DIR=str(self.workdir / "data"),
            DUCKMESH_LOG_LEVEL="warning",
            **self.storage_env(),
        )
        done = subprocess.run(
            [sys.executable, "-m", "duckmesh.cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return done.returncode, done.stdout + done.stderr
