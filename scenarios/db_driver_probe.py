"""Measure two ways for Trio code to talk to Postgres (evidence for ADR 0002).

Why it exists: DuckMesh's catalog and bus code runs under Trio, and psycopg
offers either a synchronous API (which Trio must run in worker threads) or an
asyncio API (which Trio can reach only through trio-asyncio). This probe
times both against a real, embedded Postgres so the choice rests on numbers.

What it measures, for 1 and 8 concurrent Trio tasks (one connection each):

* workloads: ``select1`` (one ``SELECT 1``) and ``hot_tx`` (the shape of the
  ingest hot path: ``BEGIN``; ``SELECT ... FOR UPDATE`` on a one-row counter
  table; ``INSERT`` a row; ``UPDATE`` the counter; ``COMMIT``);
* drivers:
  - ``thread_tx``: sync psycopg, the whole operation in ONE
    ``trio.to_thread.run_sync`` hop (what ``duckmesh/db.py`` does);
  - ``thread_stmt``: sync psycopg, one thread hop per statement;
  - ``aio_tx``: psycopg ``AsyncConnection`` under trio-asyncio, the whole
    operation in one asyncio coroutine entered once via ``aio_as_trio``;
  - ``aio_stmt``: ``AsyncConnection``, each statement awaited from Trio
    through ``aio_as_trio`` (how Trio code would naturally use it);
  - ``sync_direct`` (1 task only): plain sync psycopg in a loop on the Trio
    thread, no hop at all: the floor the others pay overhead on.

It prints ops/s, p50 and p99 per run and writes ``reports/db_driver_probe.json``.

Usage: ``python scenarios/db_driver_probe.py [--ops N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

# trio_asyncio must be imported BEFORE psycopg: it monkeypatches
# asyncio.get_running_loop, and psycopg binds that function at import time
# ("from asyncio import get_running_loop"). Imported the other way round,
# every AsyncConnection call fails with "no running event loop".
import trio_asyncio  # isort: split

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from duckmesh.embedded import EmbeddedPostgres  # noqa: E402

SETUP = """
DROP TABLE IF EXISTS probe_counter, probe_row;
CREATE TABLE probe_counter (id int PRIMARY KEY, n bigint NOT NULL);
INSERT INTO probe_counter VALUES (1, 0);
CREATE TABLE probe_row (n bigint NOT NULL, tenant text NOT NULL, payload text NOT NULL);
"""
LOCK = "SELECT n FROM probe_counter WHERE id = 1 FOR UPDATE"
INSERT = "INSERT INTO probe_row (n, tenant, payload) VALUES (%s, %s, %s)"
UPDATE = "UPDATE probe_counter SET n = %s WHERE id = 1"
PAYLOAD = json.dumps({"order_id": 1, "status": "new", "amount": 9.5})

Op = Callable[[], Awaitable[None]]


# -- sync psycopg in worker threads ------------------------------------------


def _sync_select1(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT 1").fetchone()


def _sync_hot_tx(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        row = conn.execute(LOCK).fetchone()
        assert row is not None
        n = int(row[0]) + 1
        conn.execute(INSERT, (n, "probe", PAYLOAD))
        conn.execute(UPDATE, (n,))


def thread_tx_op(conn: psycopg.Connection[Any], workload: str) -> Op:
    fn = _sync_select1 if workload == "select1" else _sync_hot_tx

    async def op() -> None:
        await trio.to_thread.run_sync(fn, conn)

    return op


def thread_stmt_op(conn: psycopg.Connection[Any], workload: str) -> Op:
    def run(sql: str, params: Any = None) -> Any:
        return (
            conn.execute(sql, params).fetchone()
            if sql.startswith("SELECT")
            else (conn.execute(sql, params))
        )

    hop = trio.to_thread.run_sync

    async def select1() -> None:
        await hop(run, "SELECT 1")

    async def hot_tx() -> None:
        await hop(run, "BEGIN")
        try:
            row = await hop(run, LOCK)
            n = int(row[0]) + 1
            await hop(run, INSERT, (n, "probe", PAYLOAD))
            await hop(run, UPDATE, (n,))
        except BaseException:
            await hop(run, "ROLLBACK")
            raise
        await hop(run, "COMMIT")

    return select1 if workload == "select1" else hot_tx


def direct_op(conn: psycopg.Connection[Any], workload: str) -> Op:
    fn = _sync_select1 if workload == "select1" else _sync_hot_tx

    async def op() -> None:
        fn(conn)

    return op


# -- psycopg AsyncConnection under trio-asyncio ------------------------------


async def _aio_select1(conn: psycopg.AsyncConnection[Any]) -> None:
    cur = await conn.execute("SELECT 1")
    await cur.fetchone()


async def _aio_hot_tx(conn: psycopg.AsyncConnection[Any]) -> None:
    async with conn.transaction():
        cur = await conn.execute(LOCK)
        row = await cur.fetchone()
        assert row is not None
        n = int(row[0]) + 1
        await conn.execute(INSERT, (n, "probe", PAYLOAD))
        await conn.execute(UPDATE, (n,))


def aio_tx_op(conn: psycopg.AsyncConnection[Any], workload: str) -> Op:
    fn = trio_asyncio.aio_as_trio(_aio_select1 if workload == "select1" else _aio_hot_tx)

    async def op() -> None:
        await fn(conn)

    return op


def aio_stmt_op(conn: psycopg.AsyncConnection[Any], workload: str) -> Op:
    async def run(sql: str, params: Any = None) -> Any:
        cur = await conn.execute(sql, params)
        return await cur.fetchone() if sql.startswith("SELECT") else None

    hop = trio_asyncio.aio_as_trio(run)

    async def select1() -> None:
        await hop("SELECT 1")

    async def hot_tx() -> None:
        await hop("BEGIN")
        try:
            row = await hop(LOCK)
            n = int(row[0]) + 1
            await hop(INSERT, (n, "probe", PAYLOAD))
            await hop(UPDATE, (n,))
        except BaseException:
            await hop("ROLLBACK")
            raise
        await hop("COMMIT")

    return select1 if workload == "select1" else hot_tx


# -- measurement ---------------------------------------------------------------


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def measure(ops: list[Op], total: int, warmup: int) -> dict[str, float]:
    """Run ``total`` operations spread over ``len(ops)`` concurrent tasks."""
    per_task = max(1, total // len(ops))
    latencies: list[float] = []

    async def worker(op: Op, count: int, record: bool) -> None:
        for _ in range(count):
            t0 = time.perf_counter()
            await op()
            if record:
                latencies.append(time.perf_counter() - t0)

    async with trio.open_nursery() as nursery:
        for op in ops:
            nursery.start_soon(worker, op, max(1, warmup // len(ops)), False)
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for op in ops:
            nursery.start_soon(worker, op, per_task, True)
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "ops": len(latencies),
        "wall_s": round(wall, 4),
        "ops_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 3),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3),
    }


async def run_probe(dsn: str, total: int, warmup: int, repeat: int) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SETUP)
    results: list[dict[str, Any]] = []
    async with trio_asyncio.open_loop():
        aconnect = trio_asyncio.aio_as_trio(psycopg.AsyncConnection.connect)
        for concurrency in (1, 8):
            sync_conns = [psycopg.connect(dsn, autocommit=True) for _ in range(concurrency)]
            async_conns = [await aconnect(dsn, autocommit=True) for _ in range(concurrency)]
            drivers: list[tuple[str, Callable[[Any, str], Op], list[Any]]] = [
                ("thread_tx", thread_tx_op, sync_conns),
                ("thread_stmt", thread_stmt_op, sync_conns),
                ("aio_tx", aio_tx_op, async_conns),
                ("aio_stmt", aio_stmt_op, async_conns),
            ]
            if concurrency == 1:
                drivers.append(("sync_direct", direct_op, sync_conns))
            try:
                for workload in ("select1", "hot_tx"):
                    for _round in range(repeat):
                        # Interleave drivers in every round so drift hits all alike.
                        for driver, factory, conns in drivers:
                            ops = [factory(c, workload) for c in conns]
                            stats = await measure(ops, total, warmup)
                            row = {
                                "workload": workload,
                                "driver": driver,
                                "concurrency": concurrency,
                                "round": _round,
                                **stats,
                            }
                            results.append(row)
                            print(
                                f"{workload:<8} {driver:<12} c={concurrency}"
                                f" round={_round}  {stats['ops_per_s']:>9.1f} ops/s"
                                f"  p50 {stats['p50_ms']:7.3f} ms  p99 {stats['p99_ms']:7.3f} ms",
                                flush=True,
                            )
            finally:
                for c in sync_conns:
                    c.close()
                for ac in async_conns:
                    await trio_asyncio.aio_as_trio(ac.close)()
    return results


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median of the rounds per (workload, driver, concurrency)."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in results:
        groups.setdefault((row["workload"], row["driver"], row["concurrency"]), []).append(row)
    out = []
    for (workload, driver, concurrency), rows in groups.items():
        out.append(
            {
                "workload": workload,
                "driver": driver,
                "concurrency": concurrency,
                "rounds": len(rows),
                "ops_per_s": round(statistics.median(r["ops_per_s"] for r in rows), 1),
                "p50_ms": round(statistics.median(r["p50_ms"] for r in rows), 3),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in rows), 3),
            }
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=4000, help="timed operations per run")
    parser.add_argument("--warmup", type=int, default=200, help="untimed operations per run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per configuration")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "db_driver_probe.json")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="duckmesh-probe-"))
    pg = EmbeddedPostgres(data_dir)
    try:
        dsn = pg.start()
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            server_version = row[0] if row else "?"
        results = trio.run(run_probe, dsn, args.ops, args.warmup, args.repeat)
    finally:
        pg.stop()
        shutil.rmtree(data_dir, ignore_errors=True)

    summary = summarise(results)
    print("\nmedian of rounds:")
    print(f"{'workload':<8} {'driver':<12} {'c':>2} {'ops/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for row in summary:
        print(
            f"{row['workload']:<8} {row['driver']:<12} {row['concurrency']:>2}"
            f" {row['ops_per_s']:>10.1f} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f}"
        )
    report = {
        "probe": "db_driver_probe",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "psycopg": psycopg.__version__,
            "libpq": psycopg.pq.version(),
            "trio": trio.__version__,
            "trio_asyncio": trio_asyncio.__version__,
            "postgres": server_version,
            "connection": "embedded Postgres over a Unix socket (pgserver)",
        },
        "settings": {"ops_per_run": args.ops, "warmup": args.warmup, "rounds": args.repeat},
        "summary": summary,
        "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nreport written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
