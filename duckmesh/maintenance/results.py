"""What a maintenance run reports: one attrs type per kind of run.

``to_json`` gives the object the API returns under ``summary`` and the
``MaintenanceCompleted`` event records; its keys and order are part of the
API (docs/API.md), so a field is added here and there together.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class CompactionSummary:
    files_merged: int = 0
    files_written: int = 0
    bytes_rewritten: int = 0
    snapshot_id: int | None = None  # None: nothing merged, or the publish was abandoned

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class RetentionSummary:
    files_retired: int = 0  # dropped from the latest snapshot by a table's retention
    snapshots_expired: int = 0
    files_deleted: int = 0  # unreferenced files collected
    orphans_deleted: int = 0  # objects no catalog row knows, past the safety window
    bus_records_deleted: int = 0  # committed bus records past the idempotency window

    @property
    def changed(self) -> bool:
        return any(attrs.astuple(self))

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class IntegrityReport:
    snapshots_checked: list[int]
    files_checked: int
    missing: list[str]  # object keys, sorted
    size_mismatch: list[str]
    checksum_mismatch: list[str]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.size_mismatch or self.checksum_mismatch)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **attrs.asdict(self)}
