"""``duckmesh restore``: the documented backup restore, in one command, made safe.

With every DuckMesh process stopped (the data-directory lock is taken, so a
running server on this data directory refuses it): the catalog database is
emptied and the dump (``pg_dump --format=custom``) restored into it with
``pg_restore``; the object-store copy, if given, is copied into the data
directory's ``objects``; pending migrations are applied; then every tenant's
snapshot ids and tokens are moved past the lost range and a restore event
recorded (``maintenance.restore``, ADR 0016), so no client can read other
data under a number it got after the backup.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path
from typing import Any

from duckmesh.config import Config
from duckmesh.maintenance.restore import SNAPSHOT_GAP, TOKEN_GAP


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1 << 60:
        raise argparse.ArgumentTypeError(f"must be 1..2^60, got {text}")
    return value


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "restore",
        help="restore the catalog (and objects) from a backup; void the lost range",
        description="Restore a backup taken as in docs/OPERATIONS.md (stop every DuckMesh"
        " process first). Snapshot ids and tokens issued after the backup are made void:"
        " they are never issued again and a query naming one is refused.",
    )
    p.add_argument("--dump", required=True, type=Path, help="pg_dump --format=custom file")
    p.add_argument(
        "--objects", type=Path, help="backup copy of the object store (DATA_DIR/objects)"
    )
    p.add_argument(
        "--token-gap",
        type=_count,
        default=TOKEN_GAP,
        help=f"tokens made void after the backup's last one (default {TOKEN_GAP})",
    )
    p.add_argument(
        "--snapshot-gap",
        type=_count,
        default=SNAPSHOT_GAP,
        help=f"snapshot ids made void after the backup's latest (default {SNAPSHOT_GAP})",
    )


def _pg_tool(name: str) -> str:
    """A Postgres client program: the embedded server's own, else from PATH."""
    try:
        from duckmesh.embedded import _pgserver

        candidate = Path(_pgserver().__file__).parent / "pginstall" / "bin" / name
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"duckmesh: {name} not found (install the Postgres client programs)")
    return found


def _replace_catalog(dsn: str, dump: Path) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS duckmesh_checkpoint CASCADE")
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    subprocess.run(
        [_pg_tool("pg_restore"), "--exit-on-error", "--no-owner", f"--dbname={dsn}", str(dump)],
        check=True,
    )


def cmd_restore(args: argparse.Namespace, config: Config) -> int:
    from duckmesh import migrations
    from duckmesh.catalog import reads
    from duckmesh.lifecycle import DataDirLock, StartRefused
    from duckmesh.maintenance.restore import void_lost_range
    from duckmesh.runtime import build_runtime, open_catalog

    if not args.dump.is_file():
        print(f"duckmesh: no dump file {str(args.dump)!r}")
        return 2
    lock = DataDirLock(config.data_dir)
    try:
        lock.acquire()
    except StartRefused as exc:
        print(f"duckmesh: {exc}: stop it first")
        return 2
    try:
        dsn, embedded = open_catalog(config, owner=True)
        try:
            _replace_catalog(dsn, args.dump)
            if args.objects is not None:
                shutil.copytree(args.objects, config.data_dir / "objects", dirs_exist_ok=True)
            rt = build_runtime(config, dsn=dsn, embedded_dsn=embedded is not None)
            try:
                rt.db.call(migrations.migrate_up, transaction=False)
                for tenant in rt.db.call(reads.tenant_ids, transaction=False):
                    ev = void_lost_range(
                        rt.db,
                        rt.bus,
                        tenant,
                        token_gap=args.token_gap,
                        snapshot_gap=args.snapshot_gap,
                    )
                    print(
                        f"tenant {tenant}: restored at snapshot {ev.backup_snapshot_id}, token"
                        f" {ev.issued_token}; void: snapshots {ev.backup_snapshot_id + 1}.."
                        f"{ev.backup_snapshot_id + ev.snapshot_gap}, tokens"
                        f" {ev.issued_token + 1}..{ev.issued_token + ev.token_gap}"
                    )
            finally:
                rt.close()
        finally:
            if embedded is not None:
                embedded.stop()
    finally:
        lock.release()
    print("restore done: run `duckmesh replay verify`, then start the servers")
    return 0
