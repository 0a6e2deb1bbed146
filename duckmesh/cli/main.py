"""The ``duckmesh`` command.

Every subcommand reads the same configuration (``DUCKMESH_*``); a bad value
exits with status 2 and one line naming the variable. Commands that need the
catalog use ``DUCKMESH_CATALOG_DSN`` or the embedded Postgres in the data
directory (adopting it when a running server already started it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from duckmesh.cli import backfill, demo, load, repair, restore, sql
from duckmesh.cli.parser import parser
from duckmesh.cli.progress import ProgressBar
from duckmesh.cli.serve import cmd_serve
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

    if config.catalog_dsn:
        return  # the catalog is elsewhere: this command uses no data directory
    if not (config.data_dir / POSTGRES_DIR).is_dir():
        raise NoCatalog(
            f"no DuckMesh catalog in data directory {str(config.data_dir.resolve())!r}"
            " (use --data-dir or DUCKMESH_DATA_DIR, or set DUCKMESH_CATALOG_DSN)"
        )
    print(f"duckmesh: data directory {str(config.data_dir.resolve())!r}", file=sys.stderr)


def _on_catalog(config: Config, body: Callable[[Conn], int]) -> int:
    """Run a command's ``body`` on one pooled catalog connection (autocommit)."""
    _require_catalog(config)
    rt = _runtime(config)
    try:
        result: int = rt.db.call(body, transaction=False)
        return result
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
        with ProgressBar(f"replaying {total} events", total) as bar:
            if args.action == "verify":
                diffs = replay.verify(conn, progress=bar.advance_to)
                bar.complete()
            else:
                try:
                    applied = replay.rebuild(conn, progress=bar.advance_to)
                except replay.ReplayRefused as exc:
                    bar.close(final_line=False)
                    print(f"rebuild refused: {exc}", file=sys.stderr)
                    return 1
                bar.complete()
        if args.action == "rebuild":
            print(f"rebuilt projections from {applied} events")
            return 0
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
    if args.json:
        print(json.dumps(body))
        return 0 if body["status"] == "ready" else 1
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
        with ProgressBar(name, scenario.seconds, unit="s") as bar:
            rows.append(run(scenario, on_progress=bar.advance_to))
            bar.complete()
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
    "demo": demo.cmd_demo,
    "restore": restore.cmd_restore,
    "repair": repair.cmd_repair,
    "backfill": backfill.cmd_backfill,
    "sql": sql.cmd_sql,
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
