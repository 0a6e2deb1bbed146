"""TEST ONLY: guarantees broken on purpose, the negative controls of the scenario runner.

``DUCKMESH_UNSAFE_BREAK=<name>`` (refused unless ``DUCKMESH_ENABLE_FAULTS=1``,
see ``duckmesh/config.py``) arms one of :data:`duckmesh.config.UNSAFE_BREAKS`
for the whole process (``build_runtime`` calls :func:`arm`). Each break is a
one-line guarded branch at the place its guarantee is kept, so the runner can
show it notices when that guarantee is gone (docs/CONSISTENCY.md, "Broken
twins"). Nothing is armed unless that configuration says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from duckmesh.bus import Batch
    from duckmesh.catalog.model import Snapshot
    from duckmesh.db import Database
    from duckmesh.storage.layout import DataFile

_armed = ""


def arm(name: str) -> None:
    """Arm ``name`` (already validated by the configuration), or nothing with ""."""
    global _armed
    _armed = name


def broken(name: str) -> bool:
    """True only in a test process that armed exactly this break."""
    return _armed == name


def publish_part(
    db: Database, batch: Batch, head: Snapshot | None, files: list[DataFile], watermark: int
) -> Snapshot | None:
    """``split_publish``: register ``files`` alone, under the commit's full
    watermark, in a transaction of their own (the rest of the commit follows
    in a second one): between the two a reader sees half the records its
    token promised. Returns the new head."""
    from duckmesh.catalog import reads, snapshots

    change = snapshots.SnapshotChange(
        tenant_id=batch.scope,
        kind="commit",
        created_by=batch.consumer_id,
        files_added=files,
        table_watermarks={f.table_id: watermark for f in files},
        max_visibility_token=watermark,
        fence=batch.fence,
    )
    snapshots.publish(db, change, head, policy=snapshots.ConflictPolicy.ABORT)
    latest: Any = db.call(lambda conn: reads.latest_snapshot(conn, batch.scope))
    return latest  # type: ignore[no-any-return]
