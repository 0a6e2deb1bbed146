"""``duckmesh repair TABLE``: restore or drop a table's damaged data files
(duckmesh.maintenance.repair; runbook in docs/OPERATIONS.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from duckmesh.config import Config


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "repair",
        help="republish a table without its damaged data files (or restore them from a backup)",
        description=(
            "Check every data file of TABLE in the tenant's latest snapshot; put a damaged"
            " file back from --from-backup when the copy there has the recorded SHA-256,"
            " and publish one snapshot (kind repair) without the files still damaged."
            " Exit status 0 when the table is whole afterwards."
        ),
    )
    p.add_argument("table")
    p.add_argument("--tenant", default="default", help="tenant id (default: default)")
    p.add_argument(
        "--from-backup",
        metavar="DIR",
        help="an object-store backup: DIR/<object key> is the copy of each data file",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def cmd_repair(args: argparse.Namespace, config: Config) -> int:
    from duckmesh.cli.main import _require_catalog
    from duckmesh.maintenance.repair import repair_table
    from duckmesh.runtime import build_runtime

    _require_catalog(config)
    rt = build_runtime(config)
    try:
        backup = Path(args.from_backup) if args.from_backup else None
        summary = repair_table(rt.db, rt.store, args.tenant, args.table, backup_dir=backup)
    finally:
        rt.close()
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print(f"table {summary.table}: {summary.files_checked} files checked")
        for key, reason in sorted(summary.damaged.items()):
            fate = "restored from backup" if key in summary.restored else "removed"
            print(f"  {key}: {reason} -> {fate}")
        if summary.snapshot_id is not None:
            print(
                f"published snapshot {summary.snapshot_id} without {len(summary.removed)} file(s)"
                f" ({summary.records_removed} rows removed)"
            )
        elif not summary.damaged:
            print("nothing to repair")
    return 0
