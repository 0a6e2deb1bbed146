"""``duckmesh serve``: the supervision tree of a role, the HTTP server, signals.

The tree of every role is declared in ``build_tree`` (drawn in
docs/SUPERVISION.md). SIGINT/SIGTERM ask the root to stop gracefully: the
HTTP server stops accepting, in-flight commits finish or roll back, leases
are released, and the embedded Postgres is stopped last.
"""

from __future__ import annotations

import signal

import hypercorn.config
import hypercorn.trio
import structlog
import trio

from duckmesh.api.app import create_app
from duckmesh.coordinator.lag import LagMonitor
from duckmesh.runtime import Runtime, coordinator_actors
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

    def __init__(self, rt: Runtime) -> None:
        super().__init__("api")
        self.rt = rt
        self.app = create_app(rt)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = hypercorn.config.Config()
        cfg.bind = [f"{self.rt.config.http_host}:{self.rt.config.http_port}"]
        if self.rt.config.tls_cert_file:
            # Hypercorn then serves HTTPS only on this bind (plain HTTP is refused).
            cfg.certfile = self.rt.config.tls_cert_file
            cfg.keyfile = self.rt.config.tls_key_file
        cfg.accesslog = None
        cfg.errorlog = None
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


def build_tree(rt: Runtime) -> Supervisor:
    role = rt.config.role
    children: list[Actor] = []

    async def listen(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await rt.notifications.listen(rt.dsn, stop=notifier.stop_requested, task_status=task_status)

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
    # readiness and metrics only (create_app decides by role).
    children.append(HttpActor(rt))
    return Supervisor("root", children, ROOT_POLICY)


async def serve(rt: Runtime) -> int:
    root = build_tree(rt)
    rt.root = root

    async def on_signals(stop: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("shutting down", signal=signal.Signals(signum).name)
                # A running DuckDB query holds its worker thread until it ends:
                # interrupt them all so that shutdown fits the grace period.
                rt.queries.stop()
                await root.stop()
                return

    code = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signals, nursery.cancel_scope)

        def started() -> None:
            cfg = rt.config
            scheme = "https" if cfg.tls_cert_file else "http"
            log.info(
                "duckmesh started",
                role=cfg.role,
                http=f"{scheme}://{cfg.http_host}:{cfg.http_port}",
            )

        code = await run_root(root, on_started=started)
        nursery.cancel_scope.cancel()
    return code
