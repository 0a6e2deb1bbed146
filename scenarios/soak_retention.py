"""Soak with retention: bus rows, catalog bytes and object files level off.

A server with a short idempotency window and short snapshot retention takes
JSON ingest (1,000 records per request, unique keys, several clients) for
``--records``; every ``--sample-s`` the catalog is measured: bus rows and
bytes (``bus_*`` tables, dead tuples included), catalog rows and bytes
(event log, projections, checkpoint), object files and bytes, and every
catalog table's bytes (heap, indexes, the rest) and live and dead tuples,
printed at the end so a relation that still grows is named. With
``--reference`` the same load runs first against a server with the default
(7-day) windows, so the figures come with their ratio to unbounded growth
measured in the same run, on the same machine load.

    python -m scenarios.soak_retention [--records 300000] [--rate 5000] [--clients 4]
        [--reference]

The offered load is steady (``--rate`` records/s), so the run lasts
``records / rate`` seconds: several idempotency windows (10 s here).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from scenarios.harness import EVENTS_TABLE, HttpClient, Server, run_threads, write_report

RETAINING = {
    "DUCKMESH_IDEMPOTENCY_WINDOW_MS": "10000",
    "DUCKMESH_MAINTENANCE_INTERVAL_MS": "2000",
    "DUCKMESH_SNAPSHOT_RETAIN_COUNT": "20",
    "DUCKMESH_SNAPSHOT_RETAIN_MS": "5000",
    "DUCKMESH_GC_SAFETY_WINDOW_MS": "2000",
    "DUCKMESH_CATALOG_CHECKPOINT_EVENTS": "200",
    "DUCKMESH_MAINTENANCE_RUNS_KEPT": "100",
}
# Figures whose level (last third against the middle third) the report gives.
LEVELLED = (
    "bus_rows",
    "bus_keys",
    "bus_mib",
    "catalog_mib",
    "events",
    "object_files",
    "object_mib",
)
BUS_TABLES = ("bus_record", "bus_batch", "bus_row_key", "bus_upload")
CATALOG_TABLES = (
    "event_log",
    "event_stream",
    "snapshot",
    "snapshot_table_watermark",
    "data_file",
    "maintenance_run",
    "catalog_checkpoint",
)


def _size(conn: psycopg.Connection[Any], tables: tuple[str, ...]) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'r' AND (n.nspname = 'duckmesh_checkpoint'"
        "  OR (n.nspname = 'public' AND c.relname = ANY(%s)))",
        (list(tables),),
    ).fetchone()
    return int(row[0]) if row else 0


# Every table of the catalog database (projections, event log, bus, checkpoint
# copy): bytes split into heap, indexes and TOAST, with live and dead tuples
# (pg_stat_user_tables, as of the last stats flush), so a growing catalog
# names the relation that grows.
_RELATIONS = """
SELECT CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END,
       pg_total_relation_size(c.oid), pg_relation_size(c.oid), pg_indexes_size(c.oid),
       coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.relkind = 'r' AND n.nspname IN ('public', 'duckmesh_checkpoint')
"""


def relations(conn: psycopg.Connection[Any]) -> dict[str, dict[str, int]]:
    """Per table: KiB in all, of the heap, the indexes and the rest (TOAST,
    free-space and visibility maps), live and dead tuples."""
    out = {}
    for name, total, heap, index, live, dead in conn.execute(_RELATIONS).fetchall():
        out[str(name)] = {
            "kib": total // 1024,
            "heap_kib": heap // 1024,
            "index_kib": index // 1024,
            "rest_kib": (total - heap - index) // 1024,
            "live": int(live),
            "dead": int(dead),
        }
    return out


def _count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def sample(dsn: str, objects: Path, written: int, started: float) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        bus_bytes = _size(conn, BUS_TABLES)
        catalog_bytes = _size(conn, CATALOG_TABLES)
        counts = {
            t: _count(conn, t)
            for t in ("bus_record", "bus_row_key", "event_log", "snapshot", "data_file")
        }
        rels = relations(conn)
    files = [p for p in objects.rglob("*") if p.is_file() and "_scratch" not in p.parts]
    # The event-log archive (one Parquet file per checkpoint) is history kept
    # on purpose: counted with the objects and on its own.
    archive = [p for p in files if "_catalog" in p.parts]
    return {
        "t_s": round(time.monotonic() - started, 1),
        "records_written": written,
        "bus_rows": counts["bus_record"],  # records ingested one by one
        "bus_keys": counts["bus_row_key"],  # records of batches (JSON and uploads)
        "bus_mib": round(bus_bytes / 2**20, 2),
        "catalog_mib": round(catalog_bytes / 2**20, 2),
        "events": counts["event_log"],
        "snapshots": counts["snapshot"],
        "data_files": counts["data_file"],
        "object_files": len(files),
        "object_mib": round(sum(p.stat().st_size for p in files) / 2**20, 2),
        "archive_files": len(archive),
        "archive_kib": sum(p.stat().st_size for p in archive) // 1024,
        "load_1m": round(os.getloadavg()[0], 1),
        "relations": rels,
    }


def soak(
    env: dict[str, str], records: int, clients: int, sample_s: float, rate: float
) -> dict[str, Any]:
    per_request = 1000
    requests = records // per_request
    interval = per_request / rate  # seconds between requests, all clients together
    server = Server()
    server.env.update(env)
    with server as srv:
        with srv.client() as c:
            assert c.post("/v1/tables", json=EVENTS_TABLE).status_code == 201
        dsn = srv.dsn()
        objects = srv.dir / "data" / "objects"
        lock = threading.Lock()
        state = {"next": 0, "written": 0}
        samples: list[dict[str, Any]] = []
        started = time.monotonic()
        done = threading.Event()

        def sampler() -> None:
            while not done.wait(sample_s):
                samples.append(sample(dsn, objects, state["written"], started))

        def client(_: int) -> None:
            http = HttpClient(srv.port)
            while True:
                with lock:
                    n = state["next"]
                    state["next"] += 1
                if n >= requests:
                    break
                pause = started + n * interval - time.monotonic()  # steady offered load
                if pause > 0:
                    time.sleep(pause)
                body: dict[str, Any] = {
                    "records": [
                        {"idempotency_key": f"r{n}-{i}", "payload": {"id": n * per_request + i}}
                        for i in range(per_request)
                    ]
                }
                status, _ = http.post("/v1/ingest/events", body)
                assert status == 200, status
                with lock:
                    state["written"] += per_request
            http.close()

        watcher = threading.Thread(target=sampler, daemon=True)
        watcher.start()
        elapsed = run_threads(client, clients)
        # Then a few collector runs without load.
        time.sleep(
            min(10.0, 3 * float(env.get("DUCKMESH_MAINTENANCE_INTERVAL_MS", "60000")) / 1000)
        )
        done.set()
        watcher.join()
        samples.append(sample(dsn, objects, state["written"], started))
    return {"env": env, "ingest_s": round(elapsed, 1), "samples": samples}


def level(samples: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Max of ``key`` over the middle and the last third of the run: bounded
    growth keeps the ratio near 1, unbounded growth near 1.5 or more."""
    third = max(1, len(samples) // 3)
    middle = max(s[key] for s in samples[third : 2 * third] or samples)
    last = max(s[key] for s in samples[2 * third :] or samples)
    return {
        "middle_max": middle,
        "last_max": last,
        "ratio": round(last / middle, 2) if middle else 0.0,
    }


def print_relations(samples: list[dict[str, Any]]) -> None:
    """Each table's KiB at a third, two thirds and the end of the run, the
    end's split (heap/index/rest: TOAST and free-space maps) and tuples:
    which relation still grows, and whether it is rows or dead space."""
    third = max(1, len(samples) // 3)
    marks = [samples[third - 1]["relations"], samples[2 * third - 1]["relations"]]
    last = samples[-1]["relations"]
    print("  relation                          KiB 1/3   2/3   end (heap/index/rest)   live   dead")
    for name in sorted(last, key=lambda r: -last[r]["kib"]):
        r = last[name]
        if r["kib"] < 64:
            continue
        at = [str(m.get(name, {"kib": 0})["kib"]) for m in marks]
        print(
            f"  {name:32s} {at[0]:>7s} {at[1]:>5s} {r['kib']:5d}"
            f" ({r['heap_kib']}/{r['index_kib']}/{r['rest_kib']})"
            f" {r['live']:8d} {r['dead']:6d}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=5000.0, help="offered records/s, all clients")
    ap.add_argument("--reference", action="store_true", help="also run with default windows")
    ns = ap.parse_args()
    report: dict[str, Any] = {"records": ns.records, "load_average": os.getloadavg()}
    runs = {"retention": RETAINING}
    if ns.reference:
        runs = {"reference": {}, **runs}
    for name, env in runs.items():
        result = soak(env, ns.records, ns.clients, ns.sample_s, ns.rate)
        result["level"] = {k: level(result["samples"], k) for k in LEVELLED}
        report[name] = result
        final = result["samples"][-1]
        print(f"\n== {name}: {ns.records} records in {result['ingest_s']} s")
        print(
            "  t_s  written   bus_rows bus_keys bus_MiB cat_MiB events snaps files"
            " obj_files obj_MiB"
        )
        for s in result["samples"]:
            print(
                f"{s['t_s']:5.0f} {s['records_written']:8d} {s['bus_rows']:10d} {s['bus_keys']:8d}"
                f" {s['bus_mib']:7.1f} {s['catalog_mib']:7.1f} {s['events']:6d}"
                f" {s['snapshots']:5d} {s['data_files']:5d} {s['object_files']:9d}"
                f" {s['object_mib']:7.1f}"
            )
        print_relations(result["samples"])
        print(
            "  level (last/middle third): "
            + ", ".join(f"{k} {v['ratio']}" for k, v in result["level"].items())
        )
        print(f"  event-log archive: {final['archive_files']} files, {final['archive_kib']} KiB")
        per_million = 1_000_000 / ns.records
        print(
            f"  end: bus {final['bus_mib']} MiB, catalog {final['catalog_mib']} MiB"
            f" (x{per_million:.1f} per million records if linear)"
        )
    report["load_average_end"] = os.getloadavg()
    write_report("soak_retention", report)


if __name__ == "__main__":
    main()
