"""``duckmesh sql``: an interactive SQL shell against a running server.

Built on ``duckmesh.client``: statements are sent to ``POST /v1/query`` and
come back as Arrow, then are printed as an aligned table, CSV, JSON lines or
the Arrow IPC stream itself. Interactively: line editing and history (GNU
readline, ``~/.duckmesh_history``), statements over several lines ending in
``;``, ``\\d`` to list tables, ``\\d NAME`` for a table's columns, ``\\q`` to
quit; each result is followed by its row count, snapshot and time. With
``-c SQL`` one statement runs and only its result goes to stdout (timing
and errors to stderr), so the output can feed a pipe.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from duckmesh.config import Config

FORMATS = ("table", "csv", "json", "arrow")
PROMPT = "duckmesh> "
CONTINUE = "      ..> "
MAX_CELL = 60
HELP = """\\d            list tables
\\d NAME       columns of table NAME
\\q            quit (or Ctrl-D)
\\?            this help
Statements end with ';' and may span several lines."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sql",
        help="interactive SQL shell against a running server",
        description="Interactive SQL shell against a running server (or one statement with -c).",
        epilog='examples: duckmesh sql\n          duckmesh sql -c "select count(*) from orders"'
        " --format csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-c", "--command", dest="sql_command", metavar="SQL", help="run one statement")
    p.add_argument("--format", choices=FORMATS, default="table", help="result format")
    p.add_argument("--url", default=os.environ.get("DUCKMESH_URL"))
    p.add_argument("--api-key", default=os.environ.get("DUCKMESH_API_KEY"))
    p.add_argument("--row-limit", type=int, help="rows per result (the server's default)")
    p.add_argument("--history-file", default=str(Path.home() / ".duckmesh_history"))


def cmd_sql(args: argparse.Namespace, config: Config) -> int:
    from duckmesh.client import Client

    scheme = "https" if config.tls_cert_file else "http"
    url = args.url or f"{scheme}://{config.http_host}:{config.http_port}"
    api_key = args.api_key or config.bootstrap_api_key
    if not api_key:
        print("duckmesh sql: needs --api-key or DUCKMESH_API_KEY", file=sys.stderr)
        return 2
    with Client(url, api_key, retries=2) as client:
        shell = Shell(client, args.format, args.row_limit, sys.stdout)
        if args.sql_command is not None:
            return 0 if shell.run_statement(args.sql_command, report=sys.stderr) else 1
        if args.format == "arrow":
            print("duckmesh sql: --format arrow needs -c", file=sys.stderr)
            return 2
        return shell.interact(args.history_file)


class Shell:
    def __init__(self, client: Any, fmt: str, row_limit: int | None, out: IO[str]) -> None:
        self.client = client
        self.format = fmt
        self.row_limit = row_limit
        self.out = out

    # -- statements -------------------------------------------------------------------

    def run_statement(self, sql: str, report: IO[str]) -> bool:
        """Run one statement and print its result; False (and the error) when refused."""
        from duckmesh.client import ClientError, query_info

        sql = sql.strip().rstrip(";").strip()
        if not sql:
            return True
        options = {} if self.row_limit is None else {"row_limit": self.row_limit}
        started = time.perf_counter()
        try:
            table = self.client.query(sql, **options)
        except ClientError as exc:
            print(f"ERROR {exc}", file=sys.stderr, flush=True)
            return False
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.print_result(table)
        info = query_info(table)
        cut = ", truncated" if info.truncated else ""
        snapshot = "no snapshot" if info.snapshot_id is None else f"snapshot {info.snapshot_id}"
        rows = "1 row" if table.num_rows == 1 else f"{table.num_rows} rows"
        print(f"({rows}{cut}, {snapshot}, {elapsed_ms:.1f} ms)", file=report, flush=True)
        return True

    def print_result(self, table: pa.Table) -> None:
        if self.format == "arrow":
            sink = sys.stdout.buffer
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            sink.flush()
            return
        rows = table.to_pylist()
        names = table.column_names
        if self.format == "csv":
            writer = csv.writer(self.out, lineterminator="\n")
            writer.writerow(names)
            writer.writerows([[_text(r[n], "") for n in names] for r in rows])
        elif self.format == "json":
            for row in rows:
                self.out.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
        else:
            self.out.write(render_table(names, [[r[n] for n in names] for r in rows]))
        self.out.flush()

    # -- meta commands ------------------------------------------------------------------

    def describe(self, name: str | None) -> None:
        from duckmesh.client import ClientError

        try:
            schema = self.client.schema()
        except ClientError as exc:
            print(f"ERROR {exc}", file=sys.stderr, flush=True)
            return
        tables = schema["tables"]
        if name is None:
            rows: list[list[Any]] = [
                [t["name"], len(t["columns"]), ", ".join(t["primary_key"]), t["row_count"]]
                for t in tables
            ]
            self.out.write(render_table(["table", "columns", "primary key", "rows"], rows))
        else:
            found = [t for t in tables if t["name"].lower() == name.lower()]
            if not found:
                print(f"ERROR no table {name!r}", file=sys.stderr, flush=True)
                return
            keys = set(found[0]["primary_key"])
            rows = [
                [c["name"], c["type"], "yes" if c["nullable"] else "no", c["name"] in keys]
                for c in found[0]["columns"]
            ]
            self.out.write(render_table(["column", "type", "nullable", "key"], rows))
        self.out.flush()

    def meta(self, line: str) -> bool:
        """Run a backslash command; False to quit."""
        word, _, rest = line.strip().partition(" ")
        if word in ("\\q", "\\quit"):
            return False
        if word == "\\d":
            self.describe(rest.strip() or None)
        elif word in ("\\?", "\\h", "\\help"):
            self.out.write(HELP + "\n")
        else:
            print(f"ERROR unknown command {word} (\\? for help)", file=sys.stderr, flush=True)
        return True

    # -- the loop ------------------------------------------------------------------------

    def interact(self, history_file: str, read: Callable[[str], str] = input) -> int:
        with _history(history_file):
            self.out.write("duckmesh sql: statements end with ';', \\? for help, \\q to quit\n")
            buffer: list[str] = []
            while True:
                try:
                    line = read(CONTINUE if buffer else PROMPT)
                except EOFError:
                    self.out.write("\n")
                    return 0
                except KeyboardInterrupt:
                    self.out.write("\n")
                    buffer = []
                    continue
                if not buffer and line.strip().startswith("\\"):
                    if not self.meta(line):
                        return 0
                    continue
                if not buffer and not line.strip():
                    continue
                buffer.append(line)
                if line.rstrip().endswith(";"):
                    self.run_statement("\n".join(buffer), report=self.out)
                    buffer = []


@contextlib.contextmanager
def _history(path: str) -> Any:
    """GNU readline line editing and a history file, when readline exists."""
    try:
        import readline
    except ImportError:  # pragma: no cover - Windows without pyreadline
        yield
        return
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(1000)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            readline.write_history_file(path)
            os.chmod(path, 0o600)  # statements may hold data


def _text(value: Any, null: str = "NULL") -> str:
    if value is None:
        return null
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def render_table(names: list[str], rows: list[list[Any]]) -> str:
    """An aligned text table; long cells are cut at ``MAX_CELL`` characters."""
    cells = [[_cut(_text(value)) for value in row] for row in rows]
    widths = [len(name) for name in names]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [
        all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) and bool(rows)
        for i in range(len(names))
    ]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return " | ".join(parts).rstrip()

    out = [line(names), "-+-".join("-" * w for w in widths)]
    out += [line(row) for row in cells]
    return "\n".join(out) + "\n"


def _cut(text: str) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"
