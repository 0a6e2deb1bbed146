"""Round trips and latency of one group-commit flush on the Postgres bus.

Publishes 300 flushes of 10 new JSON records each through ``PostgresBus``
on one traced connection and counts the frontend messages that end a round
trip (``Sync`` of the extended protocol, ``Query`` of the simple one,
``Flush`` of a pipeline that reads a result) in the libpq trace (ADR 0014:
one statement per flush of new records); then the same for the coordinator's
commit of all those records (ADR 0015 amendment: claim, plan, publish).

    python -m scenarios.bench_bus_round_trips [--flushes 300] [--records 10]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from duckmesh.bus import IngestRecord
from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog import commands
from duckmesh.coordinator.committer import CommitSettings, Committer
from duckmesh.db import Database, _pipelined
from duckmesh.storage.local import LocalObjectStore
from duckmesh.supervisors.faults import FaultPoints
from scenarios.harness import Server

T = TypeVar("T")


class TracedDatabase(Database):
    """Every call on one autocommit connection whose libpq trace is kept."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, size=1)
        self.conn: Any = psycopg.connect(dsn, autocommit=True)
        self.trace = tempfile.NamedTemporaryFile("w+", delete=False)  # noqa: SIM115
        self.conn.pgconn.trace(self.trace.fileno())

    def call(
        self, fn: Callable[[Any], T], *, transaction: bool = True, pipeline: bool = False
    ) -> T:
        if pipeline:
            return _pipelined(self.conn, fn, transaction)
        if not transaction:
            return fn(self.conn)
        with self.conn.transaction():
            return fn(self.conn)

    def round_trips_since(self, offset: int) -> int:
        self.trace.flush()
        with open(self.trace.name) as fh:
            fh.seek(offset)
            parts = [line.split("\t") for line in fh.read().splitlines() if "\tF\t" in line]
        kinds = [p[3].split()[0] if len(p) > 3 else "" for p in parts]
        # A Flush right after a Sync waits with it (one round trip, not two).
        return sum(
            1
            for i, k in enumerate(kinds)
            if k in ("Sync", "Query") or (k == "Flush" and (i == 0 or kinds[i - 1] != "Sync"))
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flushes", type=int, default=300)
    ap.add_argument("--records", type=int, default=10)
    args = ap.parse_args()
    # The server's own coordinator lingers 10 s after a notice: the commit
    # below is the first to claim these records.
    with Server(DUCKMESH_COMMIT_LINGER_MS="10000") as server:
        dsn = server.dsn()
        body = {"name": "rt", "columns": [{"name": "id", "type": "BIGINT"}]}
        table = Database(dsn, size=1).call(lambda c: commands.create_table(c, "default", body))
        db = TracedDatabase(dsn)
        bus = PostgresBus(db)

        def group(n: int) -> list[IngestRecord]:
            out = []
            for i in range(args.records):
                text = json.dumps({"id": n * args.records + i})
                digest = hashlib.sha256(text.encode()).digest()
                key = f"k{n}-{i}"
                out.append(IngestRecord(table.table_id, key, "insert", text, digest, None, 1))
            return out

        bus.publish("default", [group(0)])  # the tenant's first write creates its counter
        db.trace.flush()
        offset = os.path.getsize(db.trace.name)
        started = time.perf_counter()
        for n in range(1, args.flushes + 1):
            bus.publish("default", [group(n)])
        elapsed = time.perf_counter() - started
        trips = db.round_trips_since(offset)
        # Then the coordinator's commit of all of them, on the same traced connection.
        store = LocalObjectStore(server.dir / "rt-objects")
        committer = Committer(db, bus, store, FaultPoints(), CommitSettings(), "rt")
        db.trace.flush()
        offset = os.path.getsize(db.trace.name)
        outcome = committer.commit_once()
        commit_trips = db.round_trips_since(offset)
    print(
        f"{trips / args.flushes:.1f} round trips per flush,"
        f" {elapsed / args.flushes * 1000:.2f} ms per flush of {args.records} records"
    )
    print(
        f"{commit_trips} round trips for the commit of {outcome.records if outcome else 0}"
        " records (claim, plan, publish; the lease heartbeat's own connection not counted)"
    )


if __name__ == "__main__":
    main()
