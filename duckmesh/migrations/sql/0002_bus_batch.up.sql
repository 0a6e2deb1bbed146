-- The columnar ingest bus (ADR 0013): an upload is stored as Arrow IPC
-- batches of contiguous tokens, written in the transaction that assigns the
-- tokens, next to bus_record (one token sequence per tenant for both).

CREATE TABLE bus_batch (
    tenant_id       text NOT NULL,
    first_token     bigint NOT NULL,
    last_token      bigint NOT NULL,
    table_id        text NOT NULL,
    op              text NOT NULL,
    event_time_column text,
    ingested_at     timestamptz NOT NULL,
    schema_version  integer NOT NULL,
    data            bytea NOT NULL,  -- Arrow IPC stream (zstd buffers), rows in token order
    PRIMARY KEY (tenant_id, first_token),
    CHECK (last_token >= first_token)
);

-- An upload named by its Idempotency-Key: a retry returns this receipt.
CREATE TABLE bus_upload (
    tenant_id       text NOT NULL,
    table_id        text NOT NULL,
    idempotency_key text NOT NULL,
    content_hash    bytea NOT NULL,
    first_token     bigint,
    last_token      bigint,
    row_count       bigint NOT NULL,
    PRIMARY KEY (tenant_id, table_id, idempotency_key)
);

-- Per-row keys of uploads sent with key_column (the narrow idempotency index).
CREATE TABLE bus_row_key (
    tenant_id       text NOT NULL,
    table_id        text NOT NULL,
    idempotency_key text NOT NULL,
    token           bigint NOT NULL,
    row_hash        text NOT NULL,  -- hex digest of (op, row)
    PRIMARY KEY (tenant_id, table_id, idempotency_key)
);
