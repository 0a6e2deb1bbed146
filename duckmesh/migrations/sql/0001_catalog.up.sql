-- DuckMesh catalog, version 1: the event log, its projections and the
-- Postgres ingest bus. Projection tables are written only by
-- duckmesh.projections; replay rebuilds them from event_log.

CREATE TABLE event_stream (
    stream      text PRIMARY KEY,
    version     integer NOT NULL
);

CREATE TABLE event_log (
    position        bigserial PRIMARY KEY,
    stream          text NOT NULL,
    version         integer NOT NULL,
    event_type      text NOT NULL,
    schema_version  integer NOT NULL,
    tenant_id       text,
    payload         jsonb NOT NULL,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (stream, version)
);
CREATE INDEX event_log_tenant ON event_log (tenant_id, position);

-- projections -------------------------------------------------------------

CREATE TABLE tenant (
    tenant_id   text PRIMARY KEY,
    name        text NOT NULL,
    status      text NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE api_key (
    key_id      text PRIMARY KEY,
    tenant_id   text NOT NULL,
    key_hash    text NOT NULL,
    roles       text[] NOT NULL,
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);

CREATE TABLE table_def (
    table_id        text PRIMARY KEY,
    tenant_id       text NOT NULL,
    name            text NOT NULL,
    primary_key     text[] NOT NULL,
    partition_by    jsonb,
    retention       jsonb,
    compatibility   text NOT NULL,
    schema_version  integer NOT NULL,
    created_at      timestamptz NOT NULL,
    dropped_at      timestamptz
);
CREATE UNIQUE INDEX table_def_live_name ON table_def (tenant_id, name) WHERE dropped_at IS NULL;

CREATE TABLE table_schema_version (
    table_id        text NOT NULL,
    version         integer NOT NULL,
    columns         jsonb NOT NULL,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (table_id, version)
);

CREATE TABLE snapshot (
    tenant_id               text NOT NULL,
    snapshot_id             bigint NOT NULL,
    kind                    text NOT NULL,
    created_at              timestamptz NOT NULL,
    created_by              text NOT NULL,
    max_visibility_token    bigint NOT NULL,
    parent_id               bigint,
    expired_at              timestamptz,
    PRIMARY KEY (tenant_id, snapshot_id)
);
CREATE INDEX snapshot_by_time ON snapshot (tenant_id, created_at);

CREATE TABLE snapshot_table_watermark (
    tenant_id   text NOT NULL,
    table_id    text NOT NULL,
    snapshot_id bigint NOT NULL,
    watermark   bigint NOT NULL,
    PRIMARY KEY (tenant_id, table_id, snapshot_id)
);

CREATE TABLE data_file (
    file_id         text PRIMARY KEY,
    tenant_id       text NOT NULL,
    table_id        text NOT NULL,
    path            text NOT NULL,
    format          text NOT NULL,
    schema_version  integer NOT NULL,
    record_count    bigint NOT NULL,
    size_bytes      bigint NOT NULL,
    checksum        text NOT NULL,
    min_token       bigint NOT NULL,
    max_token       bigint NOT NULL,
    min_event_time  timestamptz,
    max_event_time  timestamptz,
    created_at      timestamptz NOT NULL,
    added_in        bigint NOT NULL,
    removed_in      bigint,
    collected_at    timestamptz
);
CREATE INDEX data_file_membership ON data_file (tenant_id, table_id, added_in);
CREATE INDEX data_file_live ON data_file (tenant_id) WHERE removed_in IS NULL;

CREATE TABLE snapshot_pin (
    tenant_id   text NOT NULL,
    snapshot_id bigint NOT NULL,
    reason      text NOT NULL,
    pinned_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, snapshot_id)
);

CREATE TABLE maintenance_run (
    position    bigint PRIMARY KEY,
    tenant_id   text NOT NULL,
    kind        text NOT NULL,
    finished_at timestamptz NOT NULL,
    summary     jsonb NOT NULL
);

-- ingest bus (postgres backend) --------------------------------------------

CREATE TABLE bus_token_counter (
    tenant_id   text PRIMARY KEY,
    last_token  bigint NOT NULL
);

CREATE TABLE bus_record (
    tenant_id       text NOT NULL,
    token           bigint NOT NULL,
    table_id        text NOT NULL,
    idempotency_key text NOT NULL,
    payload_hash    bytea NOT NULL,
    op              text NOT NULL,
    payload         text NOT NULL,
    event_time      timestamptz,
    ingested_at     timestamptz NOT NULL,
    schema_version  integer NOT NULL,
    PRIMARY KEY (tenant_id, token)
);
CREATE UNIQUE INDEX bus_record_idempotency ON bus_record (tenant_id, table_id, idempotency_key);

CREATE TABLE bus_scope (
    scope       text PRIMARY KEY,
    owner       text,
    lease_until timestamptz,
    fence       bigint NOT NULL DEFAULT 0,
    acked_token bigint NOT NULL DEFAULT 0
);

CREATE TABLE bus_quarantine (
    tenant_id       text NOT NULL,
    token           bigint NOT NULL,
    table_id        text NOT NULL,
    reason          text NOT NULL,
    quarantined_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, token)
);
