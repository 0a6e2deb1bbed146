DROP TABLE restore_gap;
DROP SCHEMA IF EXISTS duckmesh_checkpoint CASCADE;
DROP TABLE catalog_checkpoint;
DROP INDEX bus_upload_token;
ALTER TABLE bus_scope DROP COLUMN pruned_token;
