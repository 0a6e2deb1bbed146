"""The ``duckmesh`` command.

Every subcommand reads the same configuration (``DUCKMESH_*``); a bad value
exits with status 2 and one line naming the variable. Commands that need the
catalog use ``DUCKMESH_CATALOG_DSN`` or the embedded Postgres in the data
directory (adopting it when a running server already started it).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from duckmesh.cli import load
from duckmesh.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from duckmesh.db import Conn


def _runtime(config: Config) -> Any:
    from duckmesh.runtime import build_runtime

    return build_runtime(config)


def _on_catalog(config: Config, body: Callable[[Conn], int]) -> int:
    """Run a command's ``body`` on one pooled catalog connection (autocommit)."""
    rt = _runtime(config)
    try:
        result: int = rt.db.call(body, transaction=False)
        return result
    finally:
        rt.close()


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    """One process per role, or (role ``all``) a supervised process group.

    ``DUCKMESH_API_WORKERS=1`` with an explicit ``--role all`` keeps the whole
    server in one process (debugging). Refusals (data directory in use, port
    in use) are one line and exit status 2.
    """
    from duckmesh.lifecycle import StartRefused
    from duckmesh.logs import configure_logging
    from duckmesh.procgroup import GROUP_DIR_ENV

    configure_logging(config.log_format, config.log_level)
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        if GROUP_DIR_ENV in os.environ:
            return _serve_group_child(config)
        group = config.role == "all" and not (args.role and config.api_workers == 1)
        return _serve_root(config, group=group)
    except StartRefused as exc:
        print(f"duckmesh: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0  # a stop signal before the server was up: nothing was served
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _interrupt(signum: int, frame: object) -> None:
    # Until Trio takes the stop signals over, they unwind startup through the
    # `finally` blocks (which stop the embedded Postgres) instead of killing it.
    raise KeyboardInterrupt


def _serve_root(config: Config, *, group: bool) -> int:
    """Lock the data directory (when it holds the catalog), bind the port,
    open the catalog, then serve in this process or as a process group."""
    import trio

    from duckmesh.files import warn_if_root
    from duckmesh.lifecycle import DataDirLock, open_listener
    from duckmesh.procgroup import serve_group
    from duckmesh.runtime import build_runtime, migrate_and_bootstrap
    from duckmesh.server import serve

    lock = None if config.catalog_dsn else DataDirLock(config.data_dir)
    if lock is not None:
        lock.acquire()
    try:
        with open_listener(config.http_host, config.http_port) as listener:
            warn_if_root(config.data_dir)  # after the refusals: those are one line
            rt = build_runtime(config, owner=lock is not None)
            try:
                migrate_and_bootstrap(rt)
                if group:
                    return trio.run(serve_group, config, listener)
                return trio.run(serve, rt, listener)
            finally:
                rt.close()  # stops the embedded Postgres last
    finally:
        if lock is not None:
            lock.release()


def _serve_group_child(config: Config) -> int:
    """A process of a group (duckmesh.procgroup): the catalog is the root's."""
    from pathlib import Path

    import trio

    from duckmesh import procgroup
    from duckmesh.embedded import running_dsn
    from duckmesh.lifecycle import inherited_listener
    from duckmesh.runtime import build_runtime
    from duckmesh.server import serve

    env = os.environ
    dsn = None if config.catalog_dsn else running_dsn(config.data_dir)
    if dsn is None and not config.catalog_dsn:
        print("duckmesh: the process group's embedded Postgres is not running", file=sys.stderr)
        return 1
    rt = build_runtime(config, dsn=dsn, embedded_dsn=dsn is not None)
    rt.group_dir = Path(env[procgroup.GROUP_DIR_ENV])
    fd = env.get(procgroup.LISTEN_FD_ENV)
    listener = inherited_listener(int(fd)) if fd else None
    ready_fd = int(env[procgroup.READY_FD_ENV])

    def report_ready() -> None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)

    try:
        parent = int(env[procgroup.PARENT_PID_ENV])
        return trio.run(
            functools.partial(serve, rt, listener, on_ready=report_ready, parent_pid=parent)
        )
    finally:
        rt.close()


def cmd_migrate(args: argparse.Namespace, config: Config) -> int:
    from duckmesh import migrations

    def body(conn: Conn) -> int:
        if args.action == "up":
            done = migrations.migrate_up(conn)
            print(
                f"applied {len(done)} migration(s)"
                + "".join(f"\n  {m.version:04d} {m.name}" for m in done)
            )
        elif args.action == "down":
            done = migrations.migrate_down(conn, args.steps)
            print(
                f"reverted {len(done)} migration(s)"
                + "".join(f"\n  {m.version:04d} {m.name}" for m in done)
            )
        else:
            applied = set(migrations.applied(conn))
            for m in migrations.available():
                state = "applied" if m.version in applied else "pending"
                print(f"{m.version:04d} {m.name:<30} {state}")
        return 0

    return _on_catalog(config, body)


def cmd_replay(args: argparse.Namespace, config: Config) -> int:
    from duckmesh import events
    from duckmesh.projections import replay

    def body(conn: Conn) -> int:
        total = events.count(conn)

        def progress(n: int) -> None:
            width = 30
            done = int(width * n / max(total, 1))
            print(
                f"\r[{'#' * done}{'.' * (width - done)}] {n}/{total} events",
                end="",
                file=sys.stderr,
                flush=True,
            )

        if args.action == "verify":
            diffs = replay.verify(conn, progress=progress)
            print(file=sys.stderr)
            bad = [d for d in diffs if not d.equal]
            for d in diffs:
                mark = "ok  " if d.equal else "DIFF"
                print(f"{mark} {d.table:<26} live={d.live_rows} replay={d.replay_rows}")
                for row in d.only_live:
                    print(f"       only in live:   {row}")
                for row in d.only_replay:
                    print(f"       only in replay: {row}")
            print(
                f"replayed {total} events: "
                + ("projections equal the log" if not bad else f"{len(bad)} table(s) differ")
            )
            return 1 if bad else 0
        try:
            applied = replay.rebuild(conn, progress=progress)
        except replay.ReplayRefused as exc:
            print(f"\nrebuild refused: {exc}", file=sys.stderr)
            return 1
        print(f"\nrebuilt projections from {applied} events")
        return 0

    return _on_catalog(config, body)


def cmd_tenants(args: argparse.Namespace, config: Config) -> int:
    from duckmesh.catalog import commands

    def body(conn: Conn) -> int:
        if args.action == "create":
            with conn.transaction():
                commands.create_tenant(conn, args.tenant, args.name, actor="cli")
            print(f"created tenant {args.tenant}")
        elif args.action == "disable":
            with conn.transaction():
                commands.disable_tenant(conn, args.tenant, actor="cli")
            print(f"disabled tenant {args.tenant}")
        else:
            for row in conn.execute(
                "SELECT tenant_id, name, status, created_at FROM tenant ORDER BY 1"
            ):
                print(f"{row[0]:<24} {row[1]:<24} {row[2]:<9} {row[3]:%Y-%m-%d %H:%M:%S}")
        return 0

    return _on_catalog(config, body)


def cmd_keys(args: argparse.Namespace, config: Config) -> int:
    from duckmesh.catalog import commands

    def body(conn: Conn) -> int:
        if args.action == "create":
            with conn.transaction():
                key_id, key = commands.issue_key(conn, args.tenant, args.role, actor="cli")
            print(f"key id: {key_id}\nAPI key (shown once): {key}")
        elif args.action == "revoke":
            with conn.transaction():
                commands.revoke_key(conn, args.key_id, actor="cli")
            print(f"revoked {args.key_id}")
        else:
            query = (
                "SELECT key_id, tenant_id, roles, created_at, revoked_at FROM api_key"
                + (" WHERE tenant_id = %s" if args.tenant else "")
                + " ORDER BY 2, 4"
            )
            for row in conn.execute(query, (args.tenant,) if args.tenant else ()):
                state = "revoked" if row[4] else "active"
                print(f"{row[0]}  {row[1]:<20} {','.join(row[2]):<55} {state}")
        return 0

    return _on_catalog(config, body)


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    scheme = "https" if config.tls_cert_file else "http"
    url = f"{scheme}://{config.http_host}:{config.http_port}/v1/ready"
    context = None
    if config.tls_cert_file:
        import ssl

        # Trust the server's own certificate too (self-signed set-ups).
        context = ssl.create_default_context()
        context.load_verify_locations(config.tls_cert_file)
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as resp:  # noqa: S310 (http/https)
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        body = json.load(exc)
    except OSError as exc:
        print(f"no DuckMesh answering at {url}: {exc}", file=sys.stderr)
        return 1
    print(f"status: {body['status']} (role {body.get('role')})")
    for name, state in body.get("checks", {}).items():
        print(f"  {name:<14} {state}")
    print("processes:")
    for p in body.get("processes", []):
        row = f"{p['name']:<14} {p['role']:<12} pid={p['pid']}"
        print(f"  {row:<40} {p['state']:<12} restarts={p['restarts']}")
    print("actors:")
    for actor in body.get("actors", []):
        err = f"  last error: {actor['last_error']}" if actor.get("last_error") else ""
        print(f"  {actor['path']:<36} {actor['state']:<12} restarts={actor['restarts']}{err}")
    return 0 if body["status"] == "ready" else 1


TESTING_EXTRA_HINT = (
    "duckmesh {command}: needs the testing extra ({missing} is missing):"
    " pip install 'duckmesh[testing]'"
)


def _missing_testing_extra(command: str, exc: ModuleNotFoundError) -> int:
    """The harness commands live in ``duckmesh_testing``; its dependencies are optional."""
    print(TESTING_EXTRA_HINT.format(command=command, missing=exc.name), file=sys.stderr)
    return 2


def cmd_bench(args: argparse.Namespace, config: Config) -> int:
    try:
        from duckmesh_testing.bench.harness import write_report
        from duckmesh_testing.bench.load import SCENARIOS, print_table, run
    except ModuleNotFoundError as exc:
        return _missing_testing_extra("bench", exc)

    names = args.scenario or ["steady"]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s) {unknown}; choose from {sorted(SCENARIOS)}", file=sys.stderr)
        return 2
    rows = []
    for name in names:
        scenario = SCENARIOS[name]
        if args.seconds:
            import attrs

            scenario = attrs.evolve(scenario, seconds=args.seconds)
        print(f"running {name}: {scenario.description}, {scenario.seconds:.0f} s", flush=True)
        rows.append(run(scenario))
    print()
    print_table(rows)
    write_report("bench", {"results": rows})
    return 1 if any(r["errors"] for r in rows) else 0


def cmd_scenario(args: argparse.Namespace, config: Config) -> int:
    """``duckmesh scenario replay FILE``: rerun a recorded scenario on a fresh system."""
    from pathlib import Path

    try:
        from duckmesh_testing import scenario
    except ModuleNotFoundError as exc:
        return _missing_testing_extra("scenario", exc)

    try:
        recording = scenario.load_recording(Path(args.file))
    except (OSError, ValueError) as exc:
        print(f"duckmesh: cannot read scenario {args.file}: {exc}", file=sys.stderr)
        return 2
    print(
        f"replaying {len(recording['actions'])} step(s) from {args.file}"
        f" (seed {recording.get('seed')}, server env {recording.get('system_env') or {}})",
        flush=True,
    )
    try:
        stats = scenario.replay(
            recording,
            echo=lambda line: print(line, flush=True),
            keep=args.keep,
            workdir=Path(args.workdir) if args.workdir else None,
        )
    except scenario.InvariantViolation as exc:
        print(f"scenario replay: InvariantViolation: {exc}", flush=True)
        return 1
    except scenario.HarnessError as exc:
        print(f"scenario replay: could not run the scenario: {exc}", file=sys.stderr)
        return 2
    print(f"scenario replay: {stats.summary()}")
    return 0


def cmd_config(args: argparse.Namespace, config: Config) -> int:
    for key, value in config.redacted().items():
        print(f"{key} = {value!r}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="duckmesh", description="DuckMesh: fresh analytics plane")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API and background actors")
    serve.add_argument("--role", choices=["all", "api", "coordinator", "maintenance"])
    migrate = sub.add_parser("migrate", help="catalog migrations")
    migrate.add_argument("action", choices=["up", "down", "status"])
    migrate.add_argument("--steps", type=int, default=1)
    replay = sub.add_parser("replay", help="rebuild projections from the event log")
    replay.add_argument("action", choices=["verify", "rebuild"])
    tenants = sub.add_parser("tenants", help="manage tenants")
    tenants.add_argument("action", choices=["create", "list", "disable"])
    tenants.add_argument("tenant", nargs="?")
    tenants.add_argument("--name")
    keys = sub.add_parser("keys", help="manage API keys")
    keys.add_argument("action", choices=["create", "list", "revoke"])
    keys.add_argument("key_id", nargs="?")
    keys.add_argument("--tenant")
    keys.add_argument("--role", action="append", default=[])
    sub.add_parser("status", help="show a running server's readiness and actors")
    bench = sub.add_parser("bench", help="run named load scenarios and print one table")
    bench.add_argument("scenario", nargs="*", help="steady, burst, many-tenants, big-batches")
    bench.add_argument("--seconds", type=float, help="override each scenario's duration")
    scenario = sub.add_parser("scenario", help="rerun a recorded property-based scenario")
    scenario.add_argument("action", choices=["replay"])
    scenario.add_argument("file", help="a recording, e.g. reports/scenario-failure.json")
    scenario.add_argument("--keep", action="store_true", help="keep logs and data afterwards")
    scenario.add_argument("--workdir", help="directory for logs and data (kept)")
    config = sub.add_parser("config", help="configuration")
    config.add_argument("action", choices=["show"])
    load.add_parser(sub)
    return p


COMMANDS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "serve": cmd_serve,
    "migrate": cmd_migrate,
    "replay": cmd_replay,
    "tenants": cmd_tenants,
    "keys": cmd_keys,
    "status": cmd_status,
    "config": cmd_config,
    "bench": cmd_bench,
    "scenario": cmd_scenario,
    "load": load.cmd_load,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "tenants" and args.action in ("create", "disable") and not args.tenant:
        parser().error("tenants create|disable needs a tenant id")
    if args.command == "keys" and args.action == "create" and not (args.tenant and args.role):
        parser().error("keys create needs --tenant and at least one --role")
    if args.command == "keys" and args.action == "revoke" and not args.key_id:
        parser().error("keys revoke needs a key id")
    overrides = (
        {"role": args.role} if getattr(args, "role", None) and args.command == "serve" else {}
    )
    try:
        config = load_config(overrides=overrides)
    except ConfigError as exc:
        print(f"duckmesh: configuration error: {exc}", file=sys.stderr)
        return 2
    from duckmesh.errors import DuckMeshError

    # Whatever a library writes without an explicit mode is private too
    # (DuckMesh's own files get 0600/0700 explicitly, see duckmesh.files).
    os.umask(0o077)
    try:
        return COMMANDS[args.command](args, config)
    except DuckMeshError as exc:
        print(f"duckmesh: {exc.error_code}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
