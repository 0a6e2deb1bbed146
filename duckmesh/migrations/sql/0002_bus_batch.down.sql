DROP TABLE bus_row_key;
DROP TABLE bus_upload;
DROP TABLE bus_batch;
