"""``duckmesh backfill TABLE``: re-derive a table's data files from the bus
or from a snapshot (duckmesh.maintenance.backfill; runbook in docs/OPERATIONS.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from duckmesh.config import Config


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "backfill",
        help="rebuild a table's data files from the bus (or a snapshot) and publish them",
        description=(
            "Rebuild every file of TABLE from the rows the bus still holds (within"
            " DUCKMESH_IDEMPOTENCY_WINDOW_MS), or list again the table's files of snapshot N,"
            " and publish one snapshot (kind backfill) that replaces the table's files."
            " Idempotent (nothing is published when the files already match) and resumable"
            " (rerun after an interruption). Exit status 2 when the source no longer holds"
            " the table's rows."
        ),
        epilog="example: duckmesh backfill orders --tenant acme",
    )
    p.add_argument("table")
    p.add_argument("--tenant", default="default", help="tenant id (default: default)")
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--from-bus", action="store_true", help="rebuild from the bus rows (the default)"
    )
    source.add_argument(
        "--from-snapshot", metavar="N", type=int, help="take the table's files of snapshot N"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def cmd_backfill(args: argparse.Namespace, config: Config) -> int:
    from duckmesh.cli.main import _require_catalog
    from duckmesh.cli.progress import ProgressBar
    from duckmesh.maintenance.backfill import BackfillRefused, backfill_table
    from duckmesh.runtime import build_runtime

    _require_catalog(config)
    rt = build_runtime(config)
    bar: ProgressBar | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = ProgressBar(f"backfill {args.table}", total)
        bar.advance_to(done, f"backfill {args.table}: {done}/{total} files written")

    try:
        summary = backfill_table(
            rt.db,
            rt.store,
            args.tenant,
            args.table,
            from_snapshot=args.from_snapshot,
            faults=rt.faults,
            progress=progress,
        )
    except BackfillRefused as exc:
        print(f"duckmesh: backfill refused: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
        rt.close()
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    elif summary.unchanged:
        print(f"table {summary.table}: the files already match the {summary.source}; nothing to do")
    else:
        print(
            f"table {summary.table}: published snapshot {summary.snapshot_id} from the"
            f" {summary.source}: {summary.files_removed} file(s) replaced by"
            f" {summary.files_added} ({summary.records} rows)"
        )
    return 0
