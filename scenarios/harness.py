"""Benchmark plumbing lives in ``duckmesh.bench.harness`` (shared with
``duckmesh bench``); re-exported here for the scripts in this folder."""

from duckmesh.bench.harness import (
    KEY,
    ROOT,
    Server,
    free_port,
    machine,
    percentile,
    summary_ms,
    target_line,
    write_report,
)

__all__ = [
    "KEY",
    "ROOT",
    "Server",
    "free_port",
    "machine",
    "percentile",
    "summary_ms",
    "target_line",
    "write_report",
]
