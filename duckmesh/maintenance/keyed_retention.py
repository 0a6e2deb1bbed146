"""Retention by event time on keyed tables: retire whole keys, never versions.

In a keyed table a key's current version is its highest-token row (a
tombstone hides the key). Dropping an old file alone could drop a key's
newest version and bring back an older one from a newer file (an earlier
upsert with a later event time). So retention works per key:

1. candidates: the table's files in the latest snapshot whose newest event
   time is past ``retention.max_age_days`` (files without an event time stay);
2. retired keys: the keys whose current version lies in a candidate file
   (their current version is that old);
3. the candidates are removed, and every other file holding a row of a
   retired key is rewritten without those rows (or removed when nothing is
   left), so no superseded version of a retired key remains anywhere;
4. one ``retention`` snapshot removes and adds those files (REBASE policy:
   a commit that published meanwhile only adds rows with higher tokens,
   which stay the current versions; a compaction that took an input away
   makes this pass give up, and the next run starts again).

A candidate's rows of keys whose current version is elsewhere are superseded
already; dropping them changes no answer.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence

import duckdb

from duckmesh.catalog import reads, snapshots
from duckmesh.catalog.model import DataFile, Snapshot, TableDef
from duckmesh.catalog.snapshots import ConflictPolicy, RebaseRefused, SnapshotChange
from duckmesh.db import Conn, Database
from duckmesh.storage import layout
from duckmesh.storage.protocol import ObjectStore

_RETIRED = "dm_retired_keys"


def _keys(table: TableDef) -> str:
    return ", ".join(layout.quote_ident(k) for k in table.primary_key)


def _retired_keys(
    con: duckdb.DuckDBPyConnection, table: TableDef, files: Sequence[str], candidates: Sequence[str]
) -> int:
    """Fill ``_RETIRED`` with the keys whose current version is in ``candidates``."""
    keys = _keys(table)
    listed = ", ".join(layout.quote_literal(p) for p in files)
    source = f"read_parquet([{listed}], union_by_name = true, filename = true)"
    chosen = ", ".join(layout.quote_literal(p) for p in candidates)
    con.execute(
        f"CREATE TEMP TABLE {_RETIRED} AS SELECT {keys} FROM"
        f" (SELECT {keys}, filename FROM {source} {layout.newest_per_key(table.primary_key)})"
        f" WHERE filename IN ({chosen})"
    )
    row = con.execute(f"SELECT count(*) FROM {_RETIRED}").fetchone()
    return int(row[0]) if row else 0


class KeyedRetention:
    def __init__(self, db: Database, store: ObjectStore, actor: str) -> None:
        self.db = db
        self.store = store
        self.actor = actor

    def retain(self, tenant: str, now: dt.datetime) -> int:
        """Apply retention to every keyed table of the tenant that has one;
        returns the files removed from the latest snapshot."""

        def load(conn: Conn) -> tuple[Snapshot | None, list[DataFile], list[TableDef]]:
            head = reads.latest_snapshot(conn, tenant)
            files = reads.snapshot_files(conn, tenant, head.snapshot_id) if head else []
            tables = [t for t in reads.list_tables(conn, tenant) if t.retention and t.primary_key]
            return head, files, tables

        head, files, tables = self.db.call(load, transaction=False)
        if head is None:
            return 0
        removed: list[str] = []
        added: list[layout.DataFile] = []
        for table in tables:
            days = (table.retention or {})["max_age_days"]
            mine = [f for f in files if f.table_id == table.table_id]
            gone, new = self._rewrite(table, mine, now - dt.timedelta(days=days), head)
            removed += gone
            added += new
        if not removed:
            return 0
        return len(removed) if self._publish(tenant, head, removed, added) else 0

    def _rewrite(
        self, table: TableDef, files: list[DataFile], cutoff: dt.datetime, head: Snapshot
    ) -> tuple[list[str], list[layout.DataFile]]:
        candidates = [f for f in files if f.max_event_time and f.max_event_time < cutoff]
        if not candidates:
            return [], []
        path = {f.file_id: str(self.store.local_path(f.path)) for f in files}
        removed = [f.file_id for f in candidates]
        added: list[layout.DataFile] = []
        with duckdb.connect() as con:
            con.execute("SET threads = 1")
            retired = _retired_keys(
                con, table, list(path.values()), [path[f.file_id] for f in candidates]
            )
            others = [f for f in files if f not in candidates] if retired else []
            for seq, f in enumerate(others, start=1):
                hit = con.execute(
                    f"SELECT count(*) FROM read_parquet({layout.quote_literal(path[f.file_id])})"
                    f" SEMI JOIN {_RETIRED} USING ({_keys(table)})"
                ).fetchone()
                if not hit or not hit[0]:
                    continue
                removed.append(f.file_id)
                kept = self._without_retired(con, table, f, path[f.file_id], head, seq)
                if kept is not None:
                    added.append(kept)
        return removed, added

    def _without_retired(
        self,
        con: duckdb.DuckDBPyConnection,
        table: TableDef,
        f: DataFile,
        source: str,
        head: Snapshot,
        seq: int,
    ) -> layout.DataFile | None:
        """``f`` rewritten without the retired keys' rows; None when nothing is left."""
        rows = (
            f"SELECT * FROM read_parquet({layout.quote_literal(source)})"
            f" ANTI JOIN {_RETIRED} USING ({_keys(table)})"
        )
        stats = con.execute(
            f"SELECT count(*), min({layout.TOKEN_COLUMN}), max({layout.TOKEN_COLUMN}) FROM ({rows})"
        ).fetchone()
        if stats is None or not stats[0]:
            return None
        scratch = self.store.scratch_path(".parquet")
        try:
            con.execute(
                f"COPY ({rows} ORDER BY {layout.TOKEN_COLUMN}) TO"
                f" {layout.quote_literal(str(scratch))} (FORMAT parquet, COMPRESSION zstd)"
            )
            digest = layout.sha256_file(scratch)
            key = layout.compacted_key(layout.partition_dir(f.path), head.snapshot_id + 1, seq)
            info = self.store.put_file(scratch, key)
        finally:
            if scratch.exists():
                os.unlink(scratch)
        return layout.DataFile(
            file_id=layout.new_file_id(),
            table_id=f.table_id,
            path=key,
            schema_version=f.schema_version,
            record_count=int(stats[0]),
            size_bytes=info.size,
            checksum=digest,
            min_token=int(stats[1]),
            max_token=int(stats[2]),
            # Bounds of the original file: they still bound what is left.
            min_event_time=f.min_event_time,
            max_event_time=f.max_event_time,
        )

    def _publish(
        self, tenant: str, head: Snapshot, removed: list[str], added: list[layout.DataFile]
    ) -> bool:
        change = SnapshotChange(
            tenant_id=tenant,
            kind="retention",
            created_by=self.actor,
            files_added=added,
            files_removed=removed,
            metadata={"actor": self.actor},
        )
        try:
            snapshots.publish(
                self.db,
                change,
                head,
                policy=ConflictPolicy.REBASE,
                still_valid=snapshots.files_still_live(tenant, removed),
            )
        except RebaseRefused:
            return False  # the rewritten files are orphans for GC
        return True
