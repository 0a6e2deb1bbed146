DROP TABLE IF EXISTS bus_quarantine, bus_scope, bus_record, bus_token_counter,
    maintenance_run, snapshot_pin, data_file, snapshot_table_watermark, snapshot,
    table_schema_version, table_def, api_key, tenant, event_log, event_stream;
