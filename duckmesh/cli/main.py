"""The ``duckmesh`` command.

Every subcommand reads the same configuration (``DUCKMESH_*``); a bad value
exits with status 2 and one line naming the variable. Commands that need the
catalog use ``DUCKMESH_CATALOG_DSN`` or the embedded Postgres in the data
directory (adopting it when a running server already started it).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from duckmesh.catalog.model import ROLES as KEY_ROLES
from duckmesh.cli import load
from duckmesh.config import Config, ConfigError, load_config, parse_flag, to_toml

if TYPE_CHECKING:
    from duckmesh.db import Conn


def _runtime(config: Config) -> Any:
    from duckmesh.runtime import build_runtime

    return build_runtime(config)


class NoCatalog(Exception):
    """The data directory holds no catalog (and no ``DUCKMESH_CATALOG_DSN`` is set)."""


def _require_catalog(config: Config) -> None:
    """Only ``serve`` creates a data directory: every other command refuses one
    without a catalog instead of creating an empty one somewhere unexpected."""
    from duckmesh.files import POSTGRES_DIR

    if not config.catalog_dsn and not (config.data_dir / POSTGRES_DIR).is_dir():
        raise NoCatalog(
            f"no DuckMesh catalog in data directory {str(config.data_dir.resolve())!r}"
            " (use --data-dir or DUCKMESH_DATA_DIR, or set DUCKMESH_CATALOG_DSN)"
        )


def _on_catalog(config: Config, body: Callable[[Conn], int]) -> int:
    """Run a command's ``body`` on one pooled catalog connection (autocommit)."""
    _require_catalog(config)
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
            _log_data_dir(config)
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


def _log_data_dir(config: Config) -> None:
    """Say which data directory is in use, and when a new catalog is created in it."""
    import structlog

    from duckmesh.files import POSTGRES_DIR

    path = str(config.data_dir.resolve())
    if config.catalog_dsn:
        structlog.get_logger("duckmesh").info("data_directory", path=path, catalog="external")
    elif (config.data_dir / POSTGRES_DIR).is_dir():
        structlog.get_logger("duckmesh").info("data_directory", path=path, catalog="existing")
    else:
        structlog.get_logger("duckmesh").warning(
            "data_directory", path=path, catalog="new", message="creating a new catalog here"
        )


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


def _print_rows(args: argparse.Namespace, columns: list[str], rows: list[list[Any]]) -> None:
    """A list command's rows: JSON objects with ``--json``, else a table with a header."""
    if args.json:
        objects = [dict(zip(columns, row, strict=True)) for row in rows]
        print(
            json.dumps(
                objects, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v)
            )
        )
        return
    cells = [[_cell(v) for v in row] for row in [[c.upper() for c in columns], *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(value)
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y-%m-%d %H:%M:%S"))
    return "-" if value is None else str(value)


_TENANT_ACTIONS = {"disable": "disable_tenant", "enable": "enable_tenant"}


def cmd_tenants(args: argparse.Namespace, config: Config) -> int:
    from duckmesh.catalog import commands

    def body(conn: Conn) -> int:
        if args.action == "create":
            with conn.transaction():
                commands.create_tenant(conn, args.tenant, args.name, actor="cli")
            print(f"created tenant {args.tenant}")
        elif args.action in _TENANT_ACTIONS:
            with conn.transaction():
                getattr(commands, _TENANT_ACTIONS[args.action])(conn, args.tenant, actor="cli")
            print(f"{args.action}d tenant {args.tenant}")
        else:
            query = "SELECT tenant_id, name, status, created_at FROM tenant ORDER BY 1"
            rows = [list(row) for row in conn.execute(query)]
            _print_rows(args, ["tenant_id", "name", "status", "created_at"], rows)
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
            rows = [
                [*row[:4], "revoked" if row[4] else "active"]
                for row in conn.execute(query, (args.tenant,) if args.tenant else ())
            ]
            _print_rows(args, ["key_id", "tenant_id", "roles", "created_at", "state"], rows)
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
    values = config.redacted()
    print(
        json.dumps(values, indent=2) if args.json else to_toml(values),
        end="\n" if args.json else "",
    )
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line (and exit status 2), like configuration errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _roles(text: str) -> list[str]:
    """``--role a,b`` is the same as ``--role a --role b``."""
    return [role.strip() for role in text.split(",") if role.strip()]


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < 365 * 86400:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


_KEY_ROLES_HELP = (
    "roles: ingest_writer (ingest records), query_reader (queries, snapshots, reading tables),"
    "\n       table_admin (creating and changing tables), ops_admin (maintenance, audit, lag)"
)


def _command(sub: Any, name: str, summary: str, epilog: str = "") -> argparse.ArgumentParser:
    command: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=epilog or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return command


def _add_data_dir(command: argparse.ArgumentParser) -> None:
    """``--data-dir`` on every subcommand (also on those registered by other modules)."""
    with contextlib.suppress(argparse.ArgumentError):  # the command defines it itself
        command.add_argument(
            "--data-dir",
            help="data directory (embedded catalog and Parquet files);"
            " default DUCKMESH_DATA_DIR or ./duckmesh-data",
        )


def parser() -> argparse.ArgumentParser:
    from duckmesh import __version__

    p = _Parser(prog="duckmesh", description="DuckMesh: fresh analytics plane")
    p.add_argument("--version", action="version", version=f"duckmesh {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = _command(
        sub,
        "serve",
        "run the API and background actors",
        "example: duckmesh serve --data-dir /var/lib/duckmesh --port 8080",
    )
    serve.add_argument("--role", choices=["all", "api", "coordinator", "maintenance"])
    serve.add_argument("--host", help="address to bind (DUCKMESH_HTTP_HOST)")
    serve.add_argument("--port", help="port to bind (DUCKMESH_HTTP_PORT)")
    migrate = _command(
        sub,
        "migrate",
        "apply, revert or list catalog migrations",
        "example: duckmesh migrate status",
    )
    migrate.add_argument("action", choices=["up", "down", "status"])
    migrate.add_argument("--steps", type=int, default=1)
    replay = _command(
        sub,
        "replay",
        "verify or rebuild projections from the event log",
        "example: duckmesh replay verify",
    )
    replay.add_argument("action", choices=["verify", "rebuild"])
    tenants = _command(
        sub,
        "tenants",
        "create, list, disable or enable tenants",
        "example: duckmesh tenants create acme --name 'Acme Corp'",
    )
    tenants.add_argument("action", choices=["create", "list", "disable", "enable"])
    tenants.add_argument("tenant", nargs="?")
    tenants.add_argument("--name")
    tenants.add_argument("--json", action="store_true", help="list as JSON")
    keys = _command(
        sub,
        "keys",
        "create, list or revoke API keys",
        f"{_KEY_ROLES_HELP}\nexample: duckmesh keys create --tenant acme"
        " --role ingest_writer,query_reader\n(also the way to get a new key"
        " when the first one is lost)",
    )
    keys.add_argument("action", choices=["create", "list", "revoke"])
    keys.add_argument("key_id", nargs="?")
    keys.add_argument("--tenant")
    keys.add_argument(
        "--role",
        action="extend",
        type=_roles,
        default=[],
        help=f"comma-separated or repeated; one of {', '.join(KEY_ROLES)}",
    )
    keys.add_argument("--json", action="store_true", help="list as JSON")
    _command(
        sub, "status", "show a running server's readiness and actors", "example: duckmesh status"
    )
    bench = _command(
        sub,
        "bench",
        "run named load scenarios and print one table",
        "example: duckmesh bench steady --seconds 10",
    )
    bench.add_argument("scenario", nargs="*", help="steady, burst, many-tenants, big-batches")
    bench.add_argument(
        "--seconds", type=_positive_seconds, help="override each scenario's duration"
    )
    scenario = _command(
        sub,
        "scenario",
        "rerun a recorded property-based scenario",
        "example: duckmesh scenario replay reports/scenario-failure.json",
    )
    scenario.add_argument("action", choices=["replay"])
    scenario.add_argument("file", help="a recording, e.g. reports/scenario-failure.json")
    scenario.add_argument("--keep", action="store_true", help="keep logs and data afterwards")
    scenario.add_argument("--workdir", help="directory for logs and data (kept)")
    config = _command(
        sub,
        "config",
        "show the effective configuration (secrets redacted)",
        "example: duckmesh config show --json",
    )
    config.add_argument("action", choices=["show"])
    config.add_argument("--json", action="store_true", help="JSON instead of TOML")
    load.add_parser(sub)
    for command in sub.choices.values():
        _add_data_dir(command)
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


_FLAGS = (("data_dir", "--data-dir"), ("http_host", "--host"), ("http_port", "--port"))


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Settings given as flags, through the same parsers as the variables."""
    overrides: dict[str, Any] = {}
    if args.command == "serve" and args.role:
        overrides["role"] = args.role
    for field, flag in _FLAGS:
        raw = getattr(args, flag.removeprefix("--").replace("-", "_"), None)
        if raw is not None:
            overrides[field] = parse_flag(field, flag, raw)
    return overrides


def _check_usage(args: argparse.Namespace) -> None:
    if args.command == "tenants" and args.action != "list" and not args.tenant:
        parser().error(f"tenants {args.action} needs a tenant id")
    if args.command == "keys" and args.action == "create" and not (args.tenant and args.role):
        parser().error("keys create needs --tenant and at least one --role")
    if args.command == "keys" and args.action == "revoke" and not args.key_id:
        parser().error("keys revoke needs a key id")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _check_usage(args)
    try:
        config = load_config(overrides=_flag_overrides(args))
    except ConfigError as exc:
        print(f"duckmesh: configuration error: {exc}", file=sys.stderr)
        return 2
    from duckmesh.errors import DuckMeshError

    # Whatever a library writes without an explicit mode is private too
    # (DuckMesh's own files get 0600/0700 explicitly, see duckmesh.files).
    os.umask(0o077)
    try:
        return COMMANDS[args.command](args, config)
    except NoCatalog as exc:
        print(f"duckmesh: {exc}", file=sys.stderr)
        return 2
    except DuckMeshError as exc:
        print(f"duckmesh: {exc.error_code}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
