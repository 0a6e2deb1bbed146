"""``duckmesh serve``: the supervision tree of a role, the HTTP server, signals.

The tree of every role is declared in ``build_tree`` (drawn in
docs/SUPERVISION.md). SIGINT, SIGTERM and SIGHUP ask the root to stop
gracefully (bounded by ``DUCKMESH_SHUTDOWN_GRACE_MS``, duckmesh.shutdown):
new requests are answered 503 SHUTTING_DOWN, running queries get the grace
and are then interrupted, the HTTP server stops and drains, in-flight commits
finish or roll back, leases are released, and the embedded Postgres is
stopped last (by the caller, after ``serve`` returns). With role ``all`` and
several API workers ``duckmesh serve`` runs a process group instead
(duckmesh.procgroup); each of its children runs this module's ``serve``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable

import hypercorn.config
import hypercorn.trio
import structlog
import trio

from duckmesh.api.app import create_app
from duckmesh.coordinator.lag import LagMonitor
from duckmesh.notify import CHANNELS, NO_RECORDS
from duckmesh.pg_supervision import PostgresActor
from duckmesh.runtime import Runtime, coordinator_actors
from duckmesh.shutdown import drain_queries, keep_interrupting
from duckmesh.supervisors import Actor, FunctionActor, RestartPolicy, Supervisor, run_root

log = structlog.get_logger("duckmesh.server")

# Restart policies, with the reason for each in docs/SUPERVISION.md.
ROOT_POLICY = RestartPolicy(max_restarts=10, within_seconds=60, shutdown_grace=8.0)
COMMIT_POLICY = RestartPolicy(
    max_restarts=20, within_seconds=60, backoff_initial=0.05, backoff_max=2.0, shutdown_grace=6.0
)
MAINTENANCE_POLICY = RestartPolicy(max_restarts=5, within_seconds=300, backoff_max=30.0)


class HttpActor(Actor):
    """Serves the Quart-Trio app with Hypercorn until asked to stop."""

    def __init__(self, rt: Runtime, listener: socket.socket) -> None:
        super().__init__("api")
        self.rt = rt
        self.listener = listener  # bound once by the root (duckmesh.lifecycle)
        self.app = create_app(rt)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = hypercorn.config.Config()
        # Hypercorn owns (and closes) the descriptor it is given: a duplicate,
        # so that a restarted actor serves on the same socket again.
        cfg.bind = [f"fd://{os.dup(self.listener.fileno())}"]
        if self.rt.config.tls_cert_file:
            # Hypercorn then serves HTTPS only on this bind (plain HTTP is refused).
            cfg.certfile = self.rt.config.tls_cert_file
            cfg.keyfile = self.rt.config.tls_key_file
        cfg.accesslog = None  # the app logs each request itself (api/http.py)
        # Hypercorn's own errors reach the root handler, rendered by structlog
        # (duckmesh.logs): one JSON line each, tracebacks as one field.
        cfg.errorlog = logging.getLogger("hypercorn.error")
        cfg.keep_alive_timeout = 30
        cfg.graceful_timeout = 3  # idle keep-alive clients must not hold shutdown long
        # Hypercorn reports the bound addresses through task_status; the
        # supervisor's status accepts and ignores the value.
        await hypercorn.trio.serve(
            self.app,
            cfg,
            shutdown_trigger=self.stop_requested.wait,
            task_status=task_status,  # type: ignore[arg-type]
        )


def build_tree(rt: Runtime, listener: socket.socket | None) -> Supervisor:
    role = rt.config.role
    children: list[Actor] = []

    channels = CHANNELS if role in ("all", "coordinator") else NO_RECORDS

    async def listen(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await rt.notifications.listen(
            rt.dsn, stop=notifier.stop_requested, channels=channels, task_status=task_status
        )

    if rt.embedded is not None and rt.embedded.owner:
        # This process owns the embedded Postgres: it is restarted when it dies.
        children.append(PostgresActor(rt.embedded))
    notifier = FunctionActor("notifier", listen)
    children.append(notifier)
    if role in ("all", "api"):
        children.append(rt.ingest)
    if role in ("all", "coordinator"):
        commit: list[Actor] = [*coordinator_actors(rt), LagMonitor(rt.bus, limiter=rt.db.limiter)]
        children.append(Supervisor("commit", commit, COMMIT_POLICY))
    if role in ("all", "maintenance"):
        from duckmesh.maintenance.actors import maintenance_actors

        actors = maintenance_actors(rt)
        if actors:
            children.append(Supervisor("maintenance", actors, MAINTENANCE_POLICY))
    # Every role serves HTTP: api/all the whole API, the others health,
    # readiness and metrics only (create_app decides by role). The coordinator
    # and maintenance processes of a process group get no listener.
    if listener is not None:
        children.append(HttpActor(rt, listener))
    return Supervisor("root", children, ROOT_POLICY)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PARENT_POLL_S = 0.5


async def watch_parent(parent_pid: int, stop: Callable[[], None]) -> None:
    """A group child stops when its root is gone (even SIGKILLed): no orphan
    keeps serving on a port or a catalog nobody supervises."""
    while os.getppid() == parent_pid:
        await trio.sleep(PARENT_POLL_S)
    log.warning("the group root is gone; stopping", parent_pid=parent_pid)
    stop()


async def serve(
    rt: Runtime,
    listener: socket.socket | None,
    *,
    on_ready: Callable[[], None] | None = None,
    parent_pid: int | None = None,
) -> int:
    """Run the role's tree until a stop signal; the exit code (0 after a
    graceful stop). ``on_ready`` runs once every actor has started."""
    root = build_tree(rt, listener)
    rt.root = root

    async def on_signals() -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            async for signum in signals:
                grace_s = rt.config.shutdown_grace_ms / 1000
                log.info("shutting down", signal=signal.Signals(signum).name, grace_s=grace_s)
                # New requests are answered 503 at once; running queries get
                # the grace, then are interrupted (a DuckDB query holds its
                # worker thread until it ends), then the tree stops.
                rt.shutdown.begin()
                await drain_queries(rt.queries, grace_s)
                nursery.start_soon(keep_interrupting, rt.queries)
                await root.stop()
                return

    code = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signals)
        if parent_pid is not None:
            nursery.start_soon(watch_parent, parent_pid, root.request_stop)

        def started() -> None:
            cfg = rt.config
            scheme = "https" if cfg.tls_cert_file else "http"
            log.info(
                "duckmesh started",
                role=cfg.role,
                http=f"{scheme}://{cfg.http_host}:{cfg.http_port}" if listener else None,
            )
            if on_ready is not None:
                on_ready()

        code = await run_root(root, on_started=started)
        nursery.cancel_scope.cancel()
    return code
