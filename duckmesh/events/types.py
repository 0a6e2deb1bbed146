"""Catalog event types: immutable attrs classes with explicit schema versions.

An event class names its ``event_type`` and ``schema_version``. Payloads are
stored as JSON; when a class changes shape its version goes up and an
upcaster turns older payloads into the current shape on read, so projections
only ever see current events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import attrs

from duckmesh.storage.layout import DataFile, data_files

JSON = dict[str, Any]


@attrs.frozen
class Event:
    """Base of every catalog event."""

    event_type: ClassVar[str] = ""
    schema_version: ClassVar[int] = 1

    def to_payload(self) -> JSON:
        return attrs.asdict(self, recurse=True)


@attrs.frozen
class TenantCreated(Event):
    event_type = "TenantCreated"
    tenant_id: str
    name: str


@attrs.frozen
class TenantDisabled(Event):
    event_type = "TenantDisabled"
    tenant_id: str


@attrs.frozen
class TenantEnabled(Event):
    """A disabled tenant is active again (its keys authenticate again)."""

    event_type = "TenantEnabled"
    tenant_id: str


@attrs.frozen
class ApiKeyIssued(Event):
    event_type = "ApiKeyIssued"
    key_id: str
    tenant_id: str
    key_hash: str  # hex sha256 of the secret; the secret itself is never stored
    roles: list[str]


@attrs.frozen
class ApiKeyRevoked(Event):
    event_type = "ApiKeyRevoked"
    key_id: str
    tenant_id: str


@attrs.frozen
class TableCreated(Event):
    event_type = "TableCreated"
    table_id: str
    tenant_id: str
    name: str
    columns: list[JSON]  # [{"name", "type", "nullable"}]
    primary_key: list[str]
    partition_by: JSON | None
    retention: JSON | None
    compatibility: str


@attrs.frozen
class TableSchemaEvolved(Event):
    event_type = "TableSchemaEvolved"
    table_id: str
    tenant_id: str
    version: int
    columns: list[JSON]
    changes: list[str]


@attrs.frozen
class TableDropped(Event):
    event_type = "TableDropped"
    table_id: str
    tenant_id: str


@attrs.frozen
class SnapshotPublished(Event):
    """A new numbered snapshot: files added and removed, new watermarks.

    ``kind`` says why: ``commit`` (new records), ``compaction`` (same data,
    fewer files), ``retention`` (old data dropped), ``restore`` (equal to an
    older snapshot). Built only by ``duckmesh.catalog.snapshots``, which
    states the invariant ``snapshot_id == parent_id + 1 == stream version``.
    """

    event_type = "SnapshotPublished"
    tenant_id: str
    snapshot_id: int
    kind: str
    created_by: str
    max_visibility_token: int
    parent_id: int | None
    table_watermarks: dict[str, int]
    files_added: list[DataFile] = attrs.field(converter=data_files)
    files_removed: list[str]
    fence: int | None = None
    restored_from: int | None = None

    def to_payload(self) -> JSON:
        # The files' JSON form is the one stored since the first release.
        return dict(super().to_payload(), files_added=[f.to_json() for f in self.files_added])


@attrs.frozen
class SnapshotPinned(Event):
    event_type = "SnapshotPinned"
    tenant_id: str
    snapshot_id: int
    reason: str


@attrs.frozen
class SnapshotUnpinned(Event):
    event_type = "SnapshotUnpinned"
    tenant_id: str
    snapshot_id: int


@attrs.frozen
class SnapshotsExpired(Event):
    event_type = "SnapshotsExpired"
    tenant_id: str
    snapshot_ids: list[int]


@attrs.frozen
class FilesCollected(Event):
    event_type = "FilesCollected"
    tenant_id: str
    file_ids: list[str]


@attrs.frozen
class MaintenanceCompleted(Event):
    """A maintenance run finished (compaction, retention, gc, integrity)."""

    event_type = "MaintenanceCompleted"
    tenant_id: str
    kind: str
    summary: JSON


@attrs.frozen
class CatalogPruned(Event):
    """Catalog rows nothing needs any more are deleted (ADR 0016): the
    tenant's expired, unpinned snapshots up to ``through_snapshot_id`` (with
    their table watermarks), its collected ``data_file`` rows, and its
    ``maintenance_run`` rows before log position ``runs_before``."""

    event_type = "CatalogPruned"
    tenant_id: str
    through_snapshot_id: int
    runs_before: int


@attrs.frozen
class TenantRestored(Event):
    """The tenant's catalog was restored from a backup (``duckmesh restore``).

    At the backup the tenant had published snapshots up to
    ``backup_snapshot_id`` and committed tokens up to ``committed_token`` of
    the ``issued_token`` issued. What came after was lost, so snapshot ids
    ``backup_snapshot_id+1 .. +snapshot_gap`` and tokens ``issued_token+1 ..
    +token_gap`` are void (never issued again); records pending at the
    backup (tokens ``committed_token+1 .. issued_token``) were renumbered by
    ``token_gap`` (ADR 0016)."""

    event_type = "TenantRestored"
    tenant_id: str
    backup_snapshot_id: int
    committed_token: int
    issued_token: int
    snapshot_gap: int
    token_gap: int


EVENT_TYPES: dict[str, type[Event]] = {
    cls.event_type: cls
    for cls in (
        TenantCreated,
        TenantDisabled,
        TenantEnabled,
        ApiKeyIssued,
        ApiKeyRevoked,
        TableCreated,
        TableSchemaEvolved,
        TableDropped,
        SnapshotPublished,
        SnapshotPinned,
        SnapshotUnpinned,
        SnapshotsExpired,
        FilesCollected,
        MaintenanceCompleted,
        CatalogPruned,
        TenantRestored,
    )
}

# (event_type, stored schema_version) -> function returning the next version's payload.
UPCASTERS: dict[tuple[str, int], Callable[[JSON], JSON]] = {}


class UnknownEventType(ValueError):
    pass


def decode(event_type: str, schema_version: int, payload: JSON) -> Event:
    """Turn a stored payload into the current event class, upcasting as needed."""
    cls = EVENT_TYPES.get(event_type)
    if cls is None:
        raise UnknownEventType(event_type)
    if schema_version > cls.schema_version:
        # Written by a newer DuckMesh: reading it as the older shape would
        # silently drop or misread fields (e.g. during a rolled-back upgrade).
        raise UnknownEventType(
            f"{event_type} schema version {schema_version} is newer than this DuckMesh"
            f" understands ({cls.schema_version})"
        )
    version = schema_version
    while version < cls.schema_version:
        payload = UPCASTERS[(event_type, version)](payload)
        version += 1
    return cls(**payload)
