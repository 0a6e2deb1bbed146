"""``duckmesh demo``: a sample shop dataset and three queries to try.

Targets a running server (``--url``, ``DUCKMESH_URL``) or starts
``duckmesh serve`` on the data directory and keeps it running until Ctrl-C.
Three tables (customers, orders, page events; ``--rows`` in all, a million by
default) are generated locally by DuckDB from a fixed formula, no download
and no randomness, and sent as Arrow IPC uploads through the bulk ingest
path. Every chunk has its own ``Idempotency-Key``, so a rerun answers what
the server holds as duplicates instead of loading twice.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import attrs

from duckmesh.cli.load import ARROW_TYPE, Client, LoadFailed, _ipc
from duckmesh.cli.progress import ProgressBar
from duckmesh.config import Config

__all__ = ["add_parser", "cmd_demo", "demo_queries"]

CHUNK_ROWS = 100_000
_START = "TIMESTAMP '2026-01-01 00:00:00'"


@attrs.frozen
class DemoTable:
    name: str
    columns: list[dict[str, Any]]
    primary_key: list[str]
    select: str  # rows numbered i = 0..n-1 from range(n)
    op: str

    def body(self) -> dict[str, Any]:
        return {"name": self.name, "columns": self.columns, "primary_key": self.primary_key}


def _col(name: str, kind: str, nullable: bool = True) -> dict[str, Any]:
    return {"name": name, "type": kind, "nullable": nullable}


def _pick(values: tuple[str, ...], seed: str) -> str:
    """One of ``values``, spread by a hash of ``seed`` (deterministic)."""
    listed = ", ".join(f"'{v}'" for v in values)
    return f"[{listed}][1 + (hash({seed}) % {len(values)})::INTEGER]"


TABLES = (
    DemoTable(
        "demo_customers",
        [
            _col("customer_id", "BIGINT", False),
            _col("name", "VARCHAR"),
            _col("country", "VARCHAR"),
            _col("signed_up_at", "TIMESTAMP"),
        ],
        ["customer_id"],
        "SELECT i AS customer_id, 'customer ' || i AS name,"
        f" {_pick(('DE', 'FR', 'US', 'GB', 'JP', 'BR', 'IN', 'NL'), 'i')} AS country,"
        f" {_START} + to_seconds((hash(i * 7) % 31536000)::BIGINT) AS signed_up_at"
        " FROM range({n}) t(i)",
        "upsert",
    ),
    DemoTable(
        "demo_orders",
        [
            _col("order_id", "BIGINT", False),
            _col("customer_id", "BIGINT"),
            _col("status", "VARCHAR"),
            _col("amount", "DOUBLE"),
            _col("created_at", "TIMESTAMP"),
        ],
        ["order_id"],
        "SELECT i AS order_id, (hash(i) % {customers})::BIGINT AS customer_id,"
        f" {_pick(('new', 'paid', 'paid', 'shipped', 'delivered', 'cancelled'), 'i + 1')}"
        " AS status, round(5 + (hash(i * 3) % 50000) / 100.0, 2) AS amount,"
        f" {_START} + to_seconds((i * 31536000 // {{n}})::BIGINT) AS created_at"
        " FROM range({n}) t(i)",
        "upsert",
    ),
    DemoTable(
        "demo_events",
        [
            _col("event_id", "BIGINT", False),
            _col("customer_id", "BIGINT"),
            _col("kind", "VARCHAR"),
            _col("path", "VARCHAR"),
            _col("ts", "TIMESTAMP"),
            _col("duration_ms", "INTEGER"),
        ],
        [],
        "SELECT i AS event_id, (hash(i * 5) % {customers})::BIGINT AS customer_id,"
        f" {_pick(('page_view',) * 5 + ('search', 'search', 'add_to_cart', 'checkout'), 'i')}"
        " AS kind,"
        f" {_pick(('/', '/shop', '/shop/shoes', '/shop/bags', '/cart', '/help'), 'i * 11')}"
        " AS path,"
        f" {_START} + to_seconds((i * 31536000 // {{n}})::BIGINT) AS ts,"
        " (20 + hash(i * 13) % 3000)::INTEGER AS duration_ms FROM range({n}) t(i)",
        "insert",
    ),
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="load a sample dataset and print three queries to try",
        description="Load a sample dataset (customers, orders, page events) and print"
        " three queries to try. Without --url, starts duckmesh serve on the data"
        " directory and keeps it running until Ctrl-C.",
        epilog="example: duckmesh demo --rows 100000",
    )
    p.add_argument("--url", default=os.environ.get("DUCKMESH_URL"), help="a running server")
    p.add_argument("--api-key", default=os.environ.get("DUCKMESH_API_KEY"))
    p.add_argument(
        "--rows", type=_row_count, default=1_000_000, help="rows in all (default 1000000)"
    )


def _row_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 100 <= value <= 100_000_000:
        raise argparse.ArgumentTypeError(f"must be between 100 and 100000000, got {text}")
    return value


def split_rows(rows: int) -> dict[str, int]:
    customers = max(rows // 100, 10)
    orders = rows // 5
    return {
        "demo_customers": customers,
        "demo_orders": orders,
        "demo_events": rows - customers - orders,
    }


def demo_queries(max_token: int) -> list[tuple[str, dict[str, Any]]]:
    """Three (title, query body) pairs; the last waits for every loaded row."""
    return [
        (
            "revenue by country (a join over the latest snapshot)",
            {
                "sql": "SELECT c.country, count(*) AS orders, round(sum(o.amount), 2) AS revenue"
                " FROM demo_orders o JOIN demo_customers c USING (customer_id)"
                " WHERE o.status <> 'cancelled' GROUP BY 1 ORDER BY revenue DESC"
            },
        ),
        (
            "the busiest pages of the last 30 days",
            {
                "sql": "SELECT path, count(*) AS views, round(avg(duration_ms)) AS avg_ms"
                " FROM demo_events WHERE kind = 'page_view'"
                " AND ts > (SELECT max(ts) FROM demo_events) - INTERVAL 30 DAY"
                " GROUP BY 1 ORDER BY views DESC"
            },
        ),
        (
            "read your writes: waits until every loaded row is visible",
            {
                "sql": "SELECT count(*) AS events FROM demo_events",
                "min_visibility_token": max_token,
            },
        ),
    ]


def _chunks(table: DemoTable, counts: dict[str, int]) -> Iterator[tuple[int, bytes]]:
    """The table's rows as Arrow IPC bodies of at most CHUNK_ROWS rows."""
    import duckdb

    sql = table.select.format(n=counts[table.name], customers=counts["demo_customers"])
    with duckdb.connect() as con:
        reader = con.sql(sql).to_arrow_reader(CHUNK_ROWS)
        for batch in reader:
            if batch.num_rows:
                yield batch.num_rows, _ipc([batch])


def load_dataset(client: Client, rows: int) -> tuple[dict[str, int], int]:
    """Create the tables (kept when they exist) and upload their rows; the
    per-table row counts and the highest visibility token."""
    counts = split_rows(rows)
    max_token = 0
    with ProgressBar("demo dataset", rows) as bar:
        done = 0
        for table in TABLES:
            _create(client, table)
            for number, (n, body) in enumerate(_chunks(table, counts)):
                key = f"demo-{table.name}-{counts[table.name]}-{number}"
                receipt = client.post(
                    f"/v1/ingest/{table.name}?op={table.op}",
                    body,
                    {"Content-Type": ARROW_TYPE, "Idempotency-Key": key},
                )
                max_token = max(max_token, receipt["max_visibility_token"])
                done += n
                bar.advance_to(done)
    return counts, max_token


def _create(client: Client, table: DemoTable) -> None:
    try:
        client.post(
            "/v1/tables", json.dumps(table.body()).encode(), {"Content-Type": "application/json"}
        )
    except LoadFailed as exc:
        if "TABLE_EXISTS" not in str(exc):
            raise


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    if args.url:
        if not args.api_key:
            print("duckmesh demo: --url needs --api-key or DUCKMESH_API_KEY", file=sys.stderr)
            return 2
        return _run(args.url, args.api_key, args.rows)
    return _with_own_server(args, config)


def _run(url: str, api_key: str, rows: int) -> int:
    started = time.monotonic()
    try:
        counts, max_token = load_dataset(Client(url, api_key, retries=8), rows)
    except LoadFailed as exc:
        print(f"duckmesh demo: {exc}", file=sys.stderr)
        return 1
    tables = ", ".join(f"{name} ({n:,} rows)" for name, n in counts.items())
    print(f"demo dataset ready in {time.monotonic() - started:.1f}s: {tables}; token {max_token}")
    print(f"console: {url.rstrip('/')}/ui/ (paste the API key)")
    print('try these queries (KEY="your API key"):')
    for n, (title, body) in enumerate(demo_queries(max_token), 1):
        print(f"{n}. {title}")
        token = body.get("min_visibility_token")
        print(f"   {body['sql']}" + ("" if token is None else f"  (min_visibility_token {token})"))
        print(
            f"   curl -s -X POST {url.rstrip('/')}/v1/query"
            f' -H "Authorization: Bearer $KEY" -d {shlex.quote(json.dumps(body))}'
        )
    sys.stdout.flush()
    return 0


def _with_own_server(args: argparse.Namespace, config: Config) -> int:
    """Start ``duckmesh serve`` on the data directory, load, then keep it serving."""
    from duckmesh.files import POSTGRES_DIR

    data = config.data_dir.resolve()
    fresh = not config.catalog_dsn and not (data / POSTGRES_DIR).is_dir()
    print(
        f"duckmesh: data directory {str(data)!r}" + (" (creating a new catalog)" if fresh else ""),
        file=sys.stderr,
    )
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_path = data / "demo-server.log"
    scheme = "https" if config.tls_cert_file else "http"
    url = f"{scheme}://{config.http_host}:{config.http_port}"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "duckmesh.cli.main", "serve", "--data-dir", str(data)],
            stdout=log,
            stderr=log,
        )
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if not _wait_ready(url, proc):
            print(f"duckmesh demo: the server did not start; see {log_path}", file=sys.stderr)
            return 1
        api_key = args.api_key or _mint_key(config)
        print(f"server: {url} (log {log_path}); API key for the demo: {api_key}", flush=True)
        code = _run(url, api_key, args.rows)
        if code == 0:
            print("the server keeps running; Ctrl-C stops it", flush=True)
            proc.wait()
        return code
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the demo's server too


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/v1/ready", timeout=5):  # noqa: S310 (http/https)
                return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)  # polling the server's readiness with a deadline
    return False


def _mint_key(config: Config) -> str:
    """A key of every role for tenant ``default`` (as ``duckmesh keys create``)."""
    from duckmesh.catalog import commands
    from duckmesh.catalog.model import ROLES
    from duckmesh.runtime import build_runtime

    rt = build_runtime(config)
    try:
        _, key = rt.db.call(lambda c: commands.issue_key(c, "default", list(ROLES), actor="demo"))
    finally:
        rt.close()
    return key
