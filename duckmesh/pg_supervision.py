"""The embedded Postgres as a supervised child of the serving root (ADR 0017).

Why it exists: when the embedded Postgres died, nothing started it again and
DuckMesh stopped after its actors exhausted their restarts. The
``PostgresActor`` watches the postmaster of the data directory; when it is
gone the actor fails, and its supervisor restarts it (with the root's
backoff and restart intensity): the restarted actor starts Postgres again,
which runs crash recovery. The connection pools reconnect by themselves
(psycopg_pool checks connections on checkout and opens new ones), so the
processes become ready again without outside help.

The actor never stops Postgres: the owner (duckmesh.cli.serve) stops it
last, after every actor has stopped, as before.
"""

from __future__ import annotations

import subprocess

import structlog
import trio

from duckmesh import metrics
from duckmesh.embedded import EmbeddedPostgres
from duckmesh.supervisors import Actor

log = structlog.get_logger("duckmesh.pg_supervision")

POLL_S = 0.2
# A postmaster killed with -9 leaves backends that hold its shared memory for
# a moment: a start is tried again until this much time has passed.
START_ATTEMPTS_S = 30.0
START_RETRY_S = 0.5


class PostgresDied(Exception):
    """The embedded Postgres is no longer running."""


class PostgresActor(Actor):
    """Keeps the embedded Postgres of the data directory running."""

    def __init__(self, embedded: EmbeddedPostgres, *, poll_s: float = POLL_S) -> None:
        super().__init__("postgres")
        self.embedded = embedded
        self.poll_s = poll_s

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._start()
        pid = self.embedded.postmaster_pid()
        task_status.started()
        while not self.stop_requested.is_set():
            with trio.move_on_after(self.poll_s):
                await self.stop_requested.wait()
            if self.stop_requested.is_set():
                return
            if self.embedded.postmaster_pid() is None:
                log.error("the embedded Postgres is gone; restarting it", pid=pid)
                raise PostgresDied(f"the embedded Postgres (pid {pid}) is gone")

    @property
    def pid(self) -> int | None:
        return self.embedded.postmaster_pid()

    def row(self) -> dict[str, object]:
        """Its line in the process tree of ``/v1/ready`` (duckmesh.procgroup)."""
        stats = self.statistics()
        return {
            "name": self.name,
            "role": "postgres",
            "pid": self.pid,
            "restarts": stats.restarts,
            "state": stats.state.value,
        }

    async def _start(self) -> None:
        """Start Postgres if it is not running, retrying while the remains of a
        killed one still hold its shared memory."""
        with trio.fail_after(START_ATTEMPTS_S):
            while True:
                try:
                    started = await trio.to_thread.run_sync(self.embedded.ensure_running)
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                    log.warning("the embedded Postgres did not start; retrying", error=str(exc))
                    await trio.sleep(START_RETRY_S)
                    continue
                if started:
                    metrics.POSTGRES_RESTARTS.inc()
                    pid = self.embedded.postmaster_pid()
                    log.warning("the embedded Postgres was restarted", pid=pid)
                return
