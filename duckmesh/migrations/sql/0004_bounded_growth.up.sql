-- Bounded growth (ADR 0016): committed bus rows older than the idempotency
-- window are deleted in token ranges; bus_scope.pruned_token is how far a
-- tenant's bus has been pruned, so a run starts where the last one stopped.

ALTER TABLE bus_scope ADD COLUMN pruned_token bigint NOT NULL DEFAULT 0;
-- Range deletes by token (the primary keys are by idempotency key);
-- bus_row_key's token index came with 0003.
CREATE INDEX bus_upload_token ON bus_upload (tenant_id, last_token);

-- Catalog checkpoints: the projections as of a log position live in schema
-- duckmesh_checkpoint (created by the first checkpoint); replay starts there.
-- Events at or before it of the bulk types are archived as Parquet in the
-- object store (archive_key) and deleted from event_log.
CREATE TABLE catalog_checkpoint (
    position        bigint PRIMARY KEY,
    taken_at        timestamptz NOT NULL DEFAULT now(),
    events_archived bigint NOT NULL,
    archive_key     text
);

-- Restores (projection of TenantRestored): the snapshot ids and tokens a
-- restored backup's lost range may have used are void; tokens of records
-- pending at the backup were renumbered by token_gap.
CREATE TABLE restore_gap (
    position            bigint PRIMARY KEY,
    tenant_id           text NOT NULL,
    restored_at         timestamptz NOT NULL,
    backup_snapshot_id  bigint NOT NULL,
    committed_token     bigint NOT NULL,
    issued_token        bigint NOT NULL,
    snapshot_gap        bigint NOT NULL,
    token_gap           bigint NOT NULL
);
CREATE INDEX restore_gap_tenant ON restore_gap (tenant_id, position);
