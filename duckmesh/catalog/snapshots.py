"""Snapshot publication: the one way a tenant's snapshot is published.

A tenant's snapshots form one optimistic stream, ``snapshots:<tenant>``, with
one ``SnapshotPublished`` event per snapshot. The invariant every reader
relies on is stated here, once::

    snapshot id == version of the snapshots stream after its event
               == parent snapshot id + 1   (the first snapshot is 1)

except for the ``restore`` snapshot that ``duckmesh restore`` publishes
after restoring a backup: it skips ``skip_ids`` ids (the stream's version
jumps with it), so ids a lost range may have used are never issued again
(ADR 0016); the equation holds again from there on.

so publishing a snapshot on ``parent`` is appending at expected version
``parent``: two publishers that read the same head cannot both win, and
snapshot ids have no gaps.

Callers describe what changes (``SnapshotChange``: files added and removed,
table watermarks, kind, ...) and choose what happens when another publisher
got there first:

- ``ABORT``: the stale parent is refused with ``StaleParent`` (a
  ``ConcurrencyConflict``, so a command retried as a whole re-reads and runs
  again). Schema snapshots and retention use it, inside their own transaction.
- ``REBASE``: the change is re-applied on the new head when the caller's
  ``still_valid(conn, head)`` says it still means the same thing there (the
  commit's watermark is unchanged, compaction's inputs are all still live),
  otherwise ``RebaseRefused``. Commits and compaction use it.

The event, its projections (``journal.append``), the notification and the
caller's own writes (``before``/``after``: bus ack, quarantine, maintenance
record) are one transaction: a snapshot is visible with all of them or not
at all.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import psycopg

from duckmesh.catalog import journal, reads
from duckmesh.catalog.model import DataFile as ListedFile
from duckmesh.catalog.model import Snapshot
from duckmesh.errors import DuckMeshError
from duckmesh.events import ConcurrencyConflict
from duckmesh.events.store import skip_versions
from duckmesh.events.types import SnapshotPublished
from duckmesh.storage.layout import DataFile

if TYPE_CHECKING:
    from duckmesh.db import Database

Conn = psycopg.Connection[Any]
SNAPSHOTS_CHANNEL = "duckmesh_snapshots"
REBASE_ATTEMPTS = 5

# Writes of the caller's in the publishing transaction; given the new snapshot id.
TxHook = Callable[[Conn, int], None]
RebaseCheck = Callable[[Conn, Snapshot | None], bool]


class ConflictPolicy(enum.Enum):
    ABORT = "abort"
    REBASE = "rebase"


class StaleParent(ConcurrencyConflict):
    """The change was prepared on a parent that is no longer the head."""

    def __init__(self, tenant_id: str, parent_id: int) -> None:
        super().__init__(snapshots_stream(tenant_id), parent_id)
        self.tenant_id = tenant_id
        self.parent_id = parent_id


class RebaseRefused(DuckMeshError):
    """The head moved and the change no longer applies to it (or kept moving)."""

    def __init__(self, tenant_id: str, parent_id: int) -> None:
        super().__init__(
            "CONCURRENCY_CONFLICT",
            f"snapshot {parent_id + 1} of tenant {tenant_id!r} was published by another"
            " writer and the change does not apply to the new head",
            tenant=tenant_id,
            parent_id=parent_id,
        )


def files_still_live(
    tenant_id: str, removed: Sequence[str]
) -> Callable[[Conn, Snapshot | None], bool]:
    """The ``still_valid`` check of a change that replaces files (compaction,
    retention): it applies to a new head only while every file it removes is
    still listed there."""

    def still_valid(conn: Conn, latest: Snapshot | None) -> bool:
        if latest is None:
            return False
        live = {f.file_id for f in reads.snapshot_files(conn, tenant_id, latest.snapshot_id)}
        return set(removed) <= live

    return still_valid


@attrs.frozen
class SnapshotChange:
    """What a new snapshot changes relative to its parent."""

    tenant_id: str
    kind: str  # commit | compaction | retention | schema | restore
    created_by: str
    files_added: Sequence[DataFile] = ()
    files_removed: Sequence[str] = ()
    table_watermarks: Mapping[str, int] = attrs.field(factory=dict)
    max_visibility_token: int | None = None  # None: the parent's watermark
    fence: int | None = None  # the bus lease fence a commit published under
    restored_from: int | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)  # event metadata


@attrs.frozen
class Published:
    snapshot_id: int
    max_visibility_token: int


def snapshots_stream(tenant_id: str) -> str:
    return f"snapshots:{tenant_id}"


def notify_snapshot(conn: Conn, tenant_id: str, snapshot_id: int, watermark: int) -> None:
    """Announce a publication; delivered when the transaction commits."""
    conn.execute(
        "SELECT pg_notify(%s, %s)", (SNAPSHOTS_CHANNEL, f"{tenant_id}:{snapshot_id}:{watermark}")
    )


def publish_in(
    conn: Conn,
    change: SnapshotChange,
    parent: Snapshot | None,
    *,
    before: TxHook | None = None,
    after: TxHook | None = None,
    skip_ids: int = 0,
) -> Published:
    """Publish ``change`` on ``parent`` in the caller's transaction (policy
    ABORT): raises ``StaleParent`` when ``parent`` is no longer the head.
    ``skip_ids``: only a restore (see the module docstring)."""
    parent_id = parent.snapshot_id if parent else 0
    snapshot_id = parent_id + 1 + skip_ids  # the invariant: see the module docstring
    watermark = change.max_visibility_token
    if watermark is None:
        watermark = parent.max_visibility_token if parent else 0
    if before is not None:
        before(conn, snapshot_id)
    event = SnapshotPublished(
        tenant_id=change.tenant_id,
        snapshot_id=snapshot_id,
        kind=change.kind,
        created_by=change.created_by,
        max_visibility_token=watermark,
        parent_id=parent_id or None,
        table_watermarks=dict(change.table_watermarks),
        files_added=list(change.files_added),
        files_removed=list(change.files_removed),
        fence=change.fence,
        restored_from=change.restored_from,
    )
    try:
        expected = parent_id
        if skip_ids:
            expected = skip_versions(conn, snapshots_stream(change.tenant_id), parent_id, skip_ids)
        journal.append(
            conn,
            snapshots_stream(change.tenant_id),
            expected,
            [event],
            tenant_id=change.tenant_id,
            metadata=dict(change.metadata) or None,
        )
    except StaleParent:
        raise
    except ConcurrencyConflict:
        raise StaleParent(change.tenant_id, parent_id) from None
    notify_snapshot(conn, change.tenant_id, snapshot_id, watermark)
    if after is not None:
        after(conn, snapshot_id)
    return Published(snapshot_id, watermark)


def publish(
    db: Database,
    change: SnapshotChange,
    parent: Snapshot | None,
    *,
    policy: ConflictPolicy,
    still_valid: RebaseCheck | None = None,
    before: TxHook | None = None,
    after: TxHook | None = None,
    attempts: int = REBASE_ATTEMPTS,
    pipeline: bool = False,
) -> Published:
    """Publish ``change`` on ``parent`` in a transaction of its own.

    ``pipeline=True`` sends the transaction in psycopg's pipeline mode
    (``Database.call``): its dozen statements cost three round trips (the
    hooks' reads, the append, the rest with the commit). The hooks must then
    check what they wrote by fetching, not by row counts.

    Under ``REBASE`` a lost race re-reads the head and tries again on it while
    ``still_valid(conn, head)`` holds, at most ``attempts`` times; then
    ``RebaseRefused``. Under ``ABORT`` the first lost race raises
    ``StaleParent``. Whatever ``before``/``after`` raise propagates unchanged.
    """
    if policy is ConflictPolicy.REBASE and still_valid is None:
        raise ValueError("the rebase policy needs a still_valid check")
    for _ in range(attempts):

        def attempt(conn: Conn, head: Snapshot | None = parent) -> Published:
            return publish_in(conn, change, head, before=before, after=after)

        try:
            return db.call(attempt, pipeline=pipeline)
        except StaleParent:
            if policy is ConflictPolicy.ABORT:
                raise
        assert still_valid is not None

        def reread(conn: Conn) -> tuple[Snapshot | None, bool]:
            head = reads.latest_snapshot(conn, change.tenant_id)
            return head, still_valid(conn, head)

        parent_id = parent.snapshot_id if parent else 0
        parent, ok = db.call(reread, transaction=False)
        if not ok:
            raise RebaseRefused(change.tenant_id, parent_id)
    raise RebaseRefused(change.tenant_id, parent.snapshot_id if parent else 0)


def publish_removal(
    conn: Conn,
    tenant_id: str,
    actor: str,
    kind: str,
    choose: Callable[[list[ListedFile]], list[str]],
    metadata: Mapping[str, Any] | None = None,
) -> int:
    """Publish (policy ABORT, in the caller's transaction) a snapshot that
    keeps the watermark and removes the files ``choose`` picks from the
    head's files (possibly none). Returns the new snapshot id."""
    head = reads.latest_snapshot(conn, tenant_id)
    files = reads.snapshot_files(conn, tenant_id, head.snapshot_id) if head else []
    change = SnapshotChange(
        tenant_id=tenant_id,
        kind=kind,
        created_by=actor,
        files_removed=choose(files),
        metadata=metadata or {},
    )
    return publish_in(conn, change, head).snapshot_id
