"""The visibility barrier: wait until a tenant's published watermark reaches a token.

Woken by snapshot notices, re-checking the catalog at least every
``POLL_S`` so a lost notice only costs latency. A notice carries the
snapshot's id and watermark and is delivered only once the publishing
transaction committed, so it is proof of a publication:

- a wait ends without a catalog read while the newest notice's watermark
  is still below the token (re-reading would find the same snapshot);
- a receipt's wait (mode B, ``wait_visible``) is answered with the noticed
  snapshot as soon as its watermark covers the token — any published
  snapshot that covers it keeps the promise (docs/CONSISTENCY.md §2);
- a query's wait (mode A, ``wait_for_token``) still re-reads the latest
  snapshot once a notice covers the token and answers from what it read:
  the query needs the snapshot's row anyway, and the latest one keeps a
  client's answers from going back (another API worker may have answered
  from a newer snapshot whose notice this process has not had yet).

A token above anything issued to the tenant fails at once
(``VISIBILITY_TOKEN_INVALID``); a token not visible by the deadline fails
with ``CONSISTENCY_TIMEOUT`` and the current watermark, so the caller can
retry or report. After a restore from backup, a token the lost range issued
fails at once (``VISIBILITY_TOKEN_INVALID``) and one of a record renumbered
by the restore waits for its new number (``maintenance.restore``).

``skip=True`` is a test-only switch (``QuerySettings.unsafe_skip_barrier``, set
by ``DUCKMESH_UNSAFE_BREAK=skip_barrier``, accepted only with
``DUCKMESH_ENABLE_FAULTS=1``): the barrier stops waiting and answers from the
latest snapshot whatever its watermark. It exists so the scenario runner can
prove it detects a broken read-after-write guarantee.
"""

from __future__ import annotations

import attrs
import trio

from duckmesh import metrics
from duckmesh.bus import IngestBus
from duckmesh.catalog import reads
from duckmesh.catalog.model import Snapshot
from duckmesh.catalog.restores import current_token, restore_gaps
from duckmesh.db import Database
from duckmesh.errors import DuckMeshError
from duckmesh.notify import Notifications

POLL_S = 0.25


async def latest(db: Database, tenant: str) -> Snapshot | None:
    return await db.run(lambda conn: reads.latest_snapshot(conn, tenant), transaction=False)


@attrs.frozen
class Visible:
    """How a wait ended: the snapshot id, and the row when it was read."""

    snapshot_id: int | None
    snapshot: Snapshot | None


async def wait_for_token(
    db: Database,
    bus: IngestBus,
    notifications: Notifications,
    tenant: str,
    token: int,
    timeout_s: float,
    *,
    kind: str = "query",
    skip: bool = False,
) -> Snapshot | None:
    """Mode A: the latest snapshot, once its watermark is at least ``token``."""
    visible = await _wait(db, bus, notifications, tenant, token, timeout_s, kind, False, skip)
    return visible.snapshot


async def wait_visible(
    db: Database,
    bus: IngestBus,
    notifications: Notifications,
    tenant: str,
    token: int,
    timeout_s: float,
    *,
    skip: bool = False,
) -> int | None:
    """Mode B: the id of a published snapshot whose watermark is at least
    ``token``, a receipt's own token (so issued: no check against the bus)."""
    visible = await _wait(db, bus, notifications, tenant, token, timeout_s, "ingest", True, skip)
    return visible.snapshot_id


async def _wait(
    db: Database,
    bus: IngestBus,
    notifications: Notifications,
    tenant: str,
    token: int,
    timeout_s: float,
    kind: str,
    receipt: bool,
    skip: bool,
) -> Visible:
    if token < 0:
        raise DuckMeshError(
            "VISIBILITY_TOKEN_INVALID", "tokens are non-negative integers", token=token
        )
    if skip:  # deliberately broken: no wait, any watermark
        snap = await latest(db, tenant)
        return Visible(snap.snapshot_id if snap else None, snap)
    deadline = trio.current_time() + timeout_s
    signal = notifications.snapshots(tenant)
    checked_issued = receipt
    seen = signal.seq
    # The first look reads the restore gaps with the latest snapshot, in one
    # checkout and one thread hop: after a restore a token may be void or
    # renumbered (ADR 0016).
    gaps, snap = await db.run(
        lambda conn: (restore_gaps(conn, tenant), reads.latest_snapshot(conn, tenant)),
        transaction=False,
    )
    token = current_token(token, gaps)
    watermark = snap.max_visibility_token if snap else 0
    snapshot_id = snap.snapshot_id if snap else None
    while True:
        if watermark >= token:
            return Visible(snapshot_id, snap)
        if not checked_issued:
            issued = await db.in_thread(bus.latest_token, tenant)
            if token > issued:
                raise DuckMeshError(
                    "VISIBILITY_TOKEN_INVALID",
                    f"token {token} was never issued to this tenant (latest issued: {issued})",
                    token=token,
                    latest_issued_token=issued,
                )
            checked_issued = True
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            metrics.CONSISTENCY_TIMEOUTS.labels(kind=kind).inc()
            raise DuckMeshError(
                "CONSISTENCY_TIMEOUT",
                f"token {token} was not visible within {timeout_s * 1000:.0f} ms",
                token=token,
                current_watermark=watermark,
                snapshot_id=snapshot_id,
                timeout_ms=round(timeout_s * 1000),
            )
        await signal.wait(seen, min(remaining, POLL_S))
        if signal.seq != seen:
            seen = signal.seq
            noticed_id, noticed = notifications.watermarks.get(tenant, (None, 0))
            if noticed < token:
                # The newest publication does not cover the token yet.
                if noticed > watermark:
                    watermark, snapshot_id = noticed, noticed_id
                continue
            if receipt:
                return Visible(noticed_id, None)
        # A notice covers the token (a query answers from the latest
        # snapshot), or none came within POLL_S (one may have been lost).
        snap = await latest(db, tenant)
        watermark = snap.max_visibility_token if snap else 0
        snapshot_id = snap.snapshot_id if snap else None
