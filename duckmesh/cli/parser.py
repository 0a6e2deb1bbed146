"""The ``duckmesh`` command line: subcommands, their arguments and help.

Usage errors are one line and exit status 2, like configuration errors;
every subcommand takes ``--data-dir``. The commands themselves live in
``cli/main.py`` (and ``cli/load.py``).
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any, NoReturn

from duckmesh.catalog.model import ROLES as KEY_ROLES
from duckmesh.cli import backfill, demo, load, repair, restore, sql

__all__ = ["parser"]


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


def _describe(command: argparse.ArgumentParser, description: str, epilog: str) -> None:
    """A description and an example for a subcommand another module registers."""
    command.description = command.description or description
    command.epilog = command.epilog or epilog
    command.formatter_class = argparse.RawDescriptionHelpFormatter


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
    _server_commands(sub)
    _catalog_commands(sub)
    _tool_commands(sub)
    load.add_parser(sub)
    _describe(
        sub.choices["load"],
        "Bulk-load CSV, TSV, NDJSON, Parquet or Arrow files in resumable chunks.",
        "example: DUCKMESH_API_KEY=dmk_... duckmesh load orders orders.csv --op upsert --wait",
    )
    demo.add_parser(sub)
    restore.add_parser(sub)
    repair.add_parser(sub)
    backfill.add_parser(sub)
    sql.add_parser(sub)
    for command in sub.choices.values():
        _add_data_dir(command)
    return p


def _server_commands(sub: Any) -> None:
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
    status = _command(
        sub,
        "status",
        "show a running server's readiness and actors",
        "example: duckmesh status --json",
    )
    status.add_argument("--json", action="store_true", help="the readiness document as JSON")


def _catalog_commands(sub: Any) -> None:
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


def _tool_commands(sub: Any) -> None:
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
