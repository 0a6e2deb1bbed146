-- Keys copied from bus_record go back to living there only. JSON rows
-- stored as batches after the upgrade stay in bus_batch.
DROP INDEX IF EXISTS bus_row_key_token;
DELETE FROM bus_row_key k USING bus_record r
WHERE k.tenant_id = r.tenant_id AND k.table_id = r.table_id
  AND k.idempotency_key = r.idempotency_key AND k.token = r.token;
