"""After restoring a backup: make the lost range void, so nothing misleads.

Everything written after the backup is gone, but clients may hold its
snapshot ids and tokens. If the restored system issued the same numbers
again, a client would silently read other data under them. So for every
tenant, in one transaction (ADR 0016):

- the bus counter and committed position move on by ``token_gap``
  (``IngestBus.advance_tokens``; records pending at the backup are
  renumbered by the same gap and commit as usual);
- a ``restore`` snapshot is published with the backup's files and tables,
  its id ``snapshot_gap`` past the backup's latest (the snapshot stream skips
  the ids in between), its watermark the moved committed position;
- ``TenantRestored`` records the numbers, projected to ``restore_gap``: the
  barrier refuses a void token (``VISIBILITY_TOKEN_INVALID``) and maps a
  renumbered one (``catalog.restores.current_token``), and a void snapshot id
  simply does not exist (404 ``SNAPSHOT_NOT_FOUND``).

The gaps must exceed what the lost range used; the defaults (a billion
tokens, a million snapshot ids) are far above a day of heavy ingest.
"""

from __future__ import annotations

from duckmesh.bus import IngestBus
from duckmesh.catalog import reads
from duckmesh.catalog.commands import tenant_stream
from duckmesh.catalog.journal import append_current
from duckmesh.catalog.snapshots import SnapshotChange, publish_in
from duckmesh.db import Conn, Database
from duckmesh.events.types import TenantRestored

TOKEN_GAP = 1_000_000_000
SNAPSHOT_GAP = 1_000_000


def void_lost_range(
    db: Database, bus: IngestBus, tenant: str, *, token_gap: int, snapshot_gap: int
) -> TenantRestored:
    """Move the tenant's snapshot ids and tokens past the lost range."""

    def run(conn: Conn) -> TenantRestored:
        head = reads.latest_snapshot(conn, tenant)
        jump = bus.advance_tokens(tenant, token_gap, tx=conn)
        backup_id = head.snapshot_id if head else 0
        change = SnapshotChange(
            tenant_id=tenant,
            kind="restore",
            created_by="restore",
            max_visibility_token=jump.committed_token + token_gap,
            restored_from=backup_id or None,
            metadata={"actor": "restore"},
        )
        publish_in(conn, change, head, skip_ids=snapshot_gap)
        event = TenantRestored(
            tenant_id=tenant,
            backup_snapshot_id=backup_id,
            committed_token=jump.committed_token,
            issued_token=jump.issued_token,
            snapshot_gap=snapshot_gap,
            token_gap=token_gap,
        )
        append_current(
            conn, tenant_stream(tenant), event, tenant_id=tenant, metadata={"actor": "restore"}
        )
        return event

    return db.call(run)
