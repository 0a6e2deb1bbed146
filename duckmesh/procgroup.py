"""``duckmesh serve`` with role ``all``: a supervised group of processes (ADR 0012).

The root process holds the data-directory lock, owns the embedded Postgres
(supervised: restarted when it dies, duckmesh.pg_supervision), migrates the
catalog and binds the listening socket once; it then runs no request itself.
Its Trio supervision tree holds one actor per child process:
``DUCKMESH_API_WORKERS`` API workers (``serve --role api``, accepting on the
inherited socket), one coordinator process and one maintenance process. A
child that dies is restarted with the policy's backoff; too many restarts
escalate and stop the whole group. On SIGINT/SIGTERM/SIGHUP the workers are
drained first, then the background processes, then (by the caller) Postgres.

Children learn their place from ``_DUCKMESH_*`` variables (plumbing between
root and child, not configuration): the listening descriptor, a pipe to
report readiness on, the root's pid (they stop when it is gone) and the
group's run directory, where the root publishes the process tree for
``/v1/ready`` (duckmesh.group_status) and the workers keep the shared ingest
rate limits (duckmesh.ingest.limits).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs
import structlog
import trio
from prometheus_client import multiprocess

from duckmesh import metrics
from duckmesh.config import Config, api_worker_count
from duckmesh.embedded import EmbeddedPostgres
from duckmesh.files import private_dir, write_private
from duckmesh.pg_supervision import PostgresActor
from duckmesh.supervisors import Actor, RestartPolicy, Supervisor, run_root

log = structlog.get_logger("duckmesh.procgroup")

LISTEN_FD_ENV = "_DUCKMESH_LISTEN_FD"
READY_FD_ENV = "_DUCKMESH_READY_FD"
PARENT_PID_ENV = "_DUCKMESH_PARENT_PID"
GROUP_DIR_ENV = "_DUCKMESH_GROUP_DIR"
GROUP_DIR = "run"
STATUS_FILE = "group.json"
METRICS_DIR = "metrics"
STATUS_INTERVAL_S = 0.2
SERVE_ARGV = [sys.executable, "-m", "duckmesh.cli.main", "serve", "--role"]

# A child's own graceful stop takes up to DUCKMESH_SHUTDOWN_GRACE_MS (running
# queries, duckmesh.shutdown) plus its root's grace (8 s): the parents wait
# longer before they SIGKILL it (build_group adds the configured grace to these).
# Reasons in docs/SUPERVISION.md.
WORKER_POLICY = RestartPolicy(
    max_restarts=5, within_seconds=60, backoff_initial=0.2, backoff_max=5.0, shutdown_grace=12.0
)
GROUP_POLICY = RestartPolicy(
    max_restarts=5, within_seconds=60, backoff_initial=0.2, backoff_max=5.0, shutdown_grace=14.0
)


class ChildExited(Exception):
    """A child process ended without being asked to."""


class ChildProcess(Actor):
    """One ``duckmesh serve --role ROLE`` child: started, watched, stopped."""

    def __init__(
        self,
        name: str,
        role: str,
        env: dict[str, str],
        listener: socket.socket | None = None,
        *,
        argv: Sequence[str] | None = None,
    ) -> None:
        super().__init__(name)
        self.role = role
        self.env = env
        self.listener = listener
        self.argv = list(argv or [*SERVE_ARGV, role])
        self.pid: int | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.pid = None
        read_fd, write_fd = os.pipe()
        env = dict(self.env, **{READY_FD_ENV: str(write_fd), PARENT_PID_ENV: str(os.getpid())})
        fds = [write_fd]
        if self.listener is not None:
            env[LISTEN_FD_ENV] = str(self.listener.fileno())
            fds.append(self.listener.fileno())
        try:
            proc = await trio.lowlevel.open_process(
                self.argv,
                env=env,
                pass_fds=fds,
                start_new_session=True,  # terminal signals reach the root only; it orders the stop
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self.pid = proc.pid
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._terminate_on_stop, proc)
                async with trio.lowlevel.FdStream(read_fd) as ready:
                    if await ready.receive_some(1):
                        task_status.started()
                code = await proc.wait()
                nursery.cancel_scope.cancel()
        finally:
            if proc.returncode is None:
                proc.kill()  # cancelled after the grace period
                with trio.CancelScope(shield=True):
                    await proc.wait()
            metrics_dir = self.env.get(metrics.MULTIPROCESS_ENV)
            if metrics_dir:  # its gauges are no longer live
                multiprocess.mark_process_dead(proc.pid, metrics_dir)  # type: ignore[no-untyped-call]
        if code != 0 or not self.stop_requested.is_set():
            raise ChildExited(f"{self.name} (pid {proc.pid}) exited with status {code}")

    async def _terminate_on_stop(self, proc: trio.Process) -> None:
        await self.stop_requested.wait()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)

    def row(self) -> dict[str, object]:
        stats = self.statistics()
        return {
            "name": self.name,
            "role": self.role,
            "pid": self.pid,
            "restarts": stats.restarts,
            "state": stats.state.value,
        }


def child_env(config: Config, group_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("_DUCKMESH_")}
    env["DUCKMESH_API_WORKERS"] = "1"  # each child is one process
    # Settings the root took from flags (serve --data-dir/--host/--port) too.
    env["DUCKMESH_DATA_DIR"] = str(config.data_dir)
    env["DUCKMESH_HTTP_HOST"] = config.http_host
    env["DUCKMESH_HTTP_PORT"] = str(config.http_port)
    env[GROUP_DIR_ENV] = str(group_dir)
    env[metrics.MULTIPROCESS_ENV] = str(group_dir / METRICS_DIR)
    return env


def build_group(
    config: Config,
    listener: socket.socket,
    group_dir: Path,
    embedded: EmbeddedPostgres | None = None,
) -> tuple[Supervisor, Supervisor, list[ChildProcess | PostgresActor]]:
    """The root supervisor, its API-worker supervisor and every child actor;
    the embedded Postgres (when the root owns one) is supervised first."""
    env = child_env(config, group_dir)
    workers = [
        ChildProcess(f"api-{n}", "api", env, listener) for n in range(api_worker_count(config))
    ]
    grace_s = config.shutdown_grace_ms / 1000
    worker_policy = attrs.evolve(
        WORKER_POLICY, shutdown_grace=WORKER_POLICY.shutdown_grace + grace_s
    )
    api = Supervisor("api", workers, worker_policy)
    background = [ChildProcess(role, role, env) for role in ("coordinator", "maintenance")]
    group_policy = attrs.evolve(GROUP_POLICY, shutdown_grace=GROUP_POLICY.shutdown_grace + grace_s)
    postgres = [] if embedded is None else [PostgresActor(embedded)]
    root = Supervisor("root", [*postgres, api, *background], group_policy)
    return root, api, [*postgres, *workers, *background]


def process_rows(
    root: Supervisor, children: list[ChildProcess | PostgresActor]
) -> list[dict[str, object]]:
    stats = root.statistics()
    own = {"name": "root", "role": "all", "pid": os.getpid()}
    return [dict(own, restarts=stats.restarts, state=stats.state.value)] + [
        c.row() for c in children
    ]


async def publish_status(
    path: Path, root: Supervisor, children: list[ChildProcess | PostgresActor], ready: trio.Event
) -> None:
    """Keep ``group.json`` (0600) current for the workers' ``/v1/ready``."""
    last = b""
    while True:
        body = {"ready": ready.is_set(), "processes": process_rows(root, children)}
        data = json.dumps(body).encode()
        if data != last:
            await trio.to_thread.run_sync(write_private, path, data)
            last = data
        await trio.sleep(STATUS_INTERVAL_S)


async def serve_group(
    config: Config, listener: socket.socket, embedded: EmbeddedPostgres | None = None
) -> int:
    """Run the group until a stop signal or an escalation; the exit code."""
    group_dir = private_dir(config.data_dir.resolve() / GROUP_DIR)
    # Counters of an earlier run are not this group's: start from zero.
    shutil.rmtree(group_dir / METRICS_DIR, ignore_errors=True)
    private_dir(group_dir / METRICS_DIR)
    status_path = group_dir / STATUS_FILE
    root, api, children = build_group(config, listener, group_dir, embedded)
    ready = trio.Event()

    async def on_signals() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("shutting down the group", signal=signal.Signals(signum).name)
                # Drain the API workers first; once their grace is over (they
                # are interrupting queries), stop the background processes too.
                with trio.move_on_after(config.shutdown_grace_ms / 1000):
                    await api.stop()
                await root.stop()  # then the coordinator and maintenance processes
                return

    def started() -> None:
        ready.set()
        log.info(
            "duckmesh started",
            role="all",
            http=f"{config.http_host}:{config.http_port}",
            processes=[(c.name, c.pid) for c in children],
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signals)
        nursery.start_soon(publish_status, status_path, root, children, ready)
        code = await run_root(root, on_started=started)
        nursery.cancel_scope.cancel()
    status_path.unlink(missing_ok=True)
    return code
