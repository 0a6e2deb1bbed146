"""Benchmark plumbing lives in ``duckmesh_testing.bench.harness`` (shared with
``duckmesh bench``); re-exported here for the scripts in this folder."""

from duckmesh_testing.bench.harness import (
    EVENTS_TABLE,
    KEY,
    ROOT,
    HttpClient,
    Server,
    free_port,
    machine,
    percentile,
    run_threads,
    summary_ms,
    target_line,
    write_report,
)

__all__ = [
    "EVENTS_TABLE",
    "KEY",
    "ROOT",
    "HttpClient",
    "Server",
    "free_port",
    "machine",
    "percentile",
    "run_threads",
    "summary_ms",
    "target_line",
    "write_report",
]
