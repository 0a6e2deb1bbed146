#!/usr/bin/env python3
"""Check that every Parquet file the catalog references exists in the local
object store with the recorded size (and, with --checksum, the recorded
SHA-256).

The offline counterpart of ``POST /v1/integrity/run`` (the on-demand
integrity checker; no actor runs it on a schedule): it needs no running
server and covers every tenant (or one: --tenant) and every file not yet
marked collected, where the endpoint covers the caller's tenant and only the
files of its latest and pinned snapshots.
Read-only: it never changes the catalog or the store. Run it after a restore
(together with ``duckmesh replay verify``) or whenever a file is suspected
missing.

    python ops/backup/verify_objects.py                      # uses DUCKMESH_* env
    python ops/backup/verify_objects.py --dsn "$DSN" --objects /data/objects --checksum

Catalog: --dsn, else DUCKMESH_CATALOG_DSN, else the embedded Postgres running
in DUCKMESH_DATA_DIR/pg (it must be running: start ``duckmesh serve`` or any
``duckmesh`` command that adopts it). Objects: --objects, else
DUCKMESH_DATA_DIR/objects (DUCKMESH_DATA_DIR defaults to ./duckmesh-data).

Exit status: 0 when every referenced file is present and intact, 1 when any
is missing or differs, 2 when the catalog cannot be read.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo


def embedded_dsn(data_dir: Path) -> str | None:
    """The DSN of the embedded Postgres running in ``data_dir/pg``, if any,
    with the password DuckMesh keeps in ``data_dir/pg-password``."""
    pgdata = (data_dir / "pg").resolve()
    try:
        from pgserver.utils import PostmasterInfo
    except ImportError:
        return None
    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return None
    uri: str = info.get_uri()
    password = data_dir / "pg-password"
    if password.exists():
        return make_conninfo(uri, password=password.read_text().strip())
    return uri


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", help="catalog DSN (default: DUCKMESH_CATALOG_DSN or embedded)")
    p.add_argument("--objects", help="object store root (default: DUCKMESH_DATA_DIR/objects)")
    p.add_argument(
        "--checksum", action="store_true", help="also compare SHA-256 (reads every file)"
    )
    p.add_argument("--tenant", help="only this tenant")
    args = p.parse_args(argv)

    data_dir = Path(os.environ.get("DUCKMESH_DATA_DIR", "duckmesh-data"))
    dsn = args.dsn or os.environ.get("DUCKMESH_CATALOG_DSN") or embedded_dsn(data_dir)
    if not dsn:
        print(
            f"verify_objects: no catalog: give --dsn, set DUCKMESH_CATALOG_DSN, or start the"
            f" embedded Postgres in {data_dir / 'pg'}",
            file=sys.stderr,
        )
        return 2
    root = Path(args.objects) if args.objects else data_dir / "objects"

    sql = (
        "SELECT tenant_id, table_id, path, size_bytes, checksum FROM data_file"
        " WHERE collected_at IS NULL" + (" AND tenant_id = %s" if args.tenant else "")
    )
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = conn.execute(sql, (args.tenant,) if args.tenant else ()).fetchall()
    except psycopg.Error as exc:
        # Never print the DSN: it may hold a password.
        print(f"verify_objects: cannot read the catalog: {type(exc).__name__}", file=sys.stderr)
        return 2

    referenced = set()
    missing = mismatched = bad_checksum = 0
    for tenant, table, key, size, checksum in rows:
        referenced.add(key)
        path = root / key
        if not path.is_file():
            missing += 1
            print(f"MISSING  {tenant} {table} {key}")
            continue
        actual = path.stat().st_size
        if actual != size:
            mismatched += 1
            print(f"SIZE     {tenant} {table} {key} recorded={size} actual={actual}")
            continue
        if args.checksum and sha256(path) != checksum:
            bad_checksum += 1
            print(f"CHECKSUM {tenant} {table} {key}")

    # Files nobody references (failed commits, orphans GC has not deleted yet): harmless.
    unreferenced = 0
    if root.is_dir():
        for dirpath, dirnames, filenames in os.walk(root):
            if Path(dirpath) == root:
                dirnames[:] = [d for d in dirnames if d != "_scratch"]
            for name in filenames:
                key = str((Path(dirpath) / name).relative_to(root))
                mine = args.tenant is None or key.startswith(args.tenant + "/")
                if key.endswith(".parquet") and key not in referenced and mine:
                    unreferenced += 1

    bad = missing + mismatched + bad_checksum
    print(
        f"checked {len(rows)} referenced file(s) under {root}: {missing} missing,"
        f" {mismatched} wrong size"
        + (f", {bad_checksum} wrong checksum" if args.checksum else " (checksums not read)")
        + f"; {unreferenced} unreferenced file(s) (harmless orphans)"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
