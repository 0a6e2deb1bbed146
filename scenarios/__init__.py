"""Benchmarks and load scenarios (scripts, not tests).

Each benchmark starts a real DuckMesh (embedded Postgres, default settings
unless it says otherwise), drives it over HTTP, prints p50/p95/p99 and
throughput with ratios against a baseline measured in the same run, and
writes a JSON report under ``reports/``.
"""
