-- JSON record requests join the columnar bus (ADR 0014): their rows are
-- stored in bus_batch and their idempotency keys in bus_row_key, the one
-- key index of a tenant's tables. Keys of records written before this
-- migration move there too (as hex SHA-256, the form new records use), so a
-- retry of an old record is still recognised. bus_record keeps its rows:
-- uncommitted ones are still claimed and committed.

INSERT INTO bus_row_key (tenant_id, table_id, idempotency_key, token, row_hash)
SELECT tenant_id, table_id, idempotency_key, token, encode(payload_hash, 'hex')
FROM bus_record
ON CONFLICT DO NOTHING;

-- A token's key (quarantine listings) and deletion by token range (retention).
CREATE INDEX bus_row_key_token ON bus_row_key (tenant_id, token);
