-- The trace ids of the ingest requests whose rows a bus batch holds (at most
-- 64, see duckmesh/tracing.py), so the coordinator can log them on the commit
-- and record them in the snapshot's metadata. NULL: none known (batches
-- written before this migration, or by a request without a trace).
ALTER TABLE bus_batch ADD COLUMN trace_ids text[];
