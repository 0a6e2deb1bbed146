ALTER TABLE bus_batch DROP COLUMN trace_ids;
