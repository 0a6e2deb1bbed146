"""Fuzz the HTTP API against its OpenAPI document (``tox -e fuzz``).

Starts ``duckmesh serve`` on a fresh data directory (embedded Postgres) with
a bootstrap key, creates a table so the table, ingest and query routes have
something real to hit, then runs schemathesis against
``duckmesh/api/openapi.json`` with a fixed seed and a bounded number of
examples per operation. Any 5xx, undocumented status code, wrong content
type or response that does not match its schema fails the run; the report
(and a pytest file reproducing each failure) is written to ``--report-dir``.

    python -m scenarios.fuzz_api [--max-examples 100] [--seed 20261202]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from scenarios.harness import KEY, ROOT, Server

SCHEMA = ROOT / "duckmesh" / "api" / "openapi.json"
CONFIG = Path(__file__).with_suffix(".toml")
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
# The table the table and ingest routes are pointed at (see fuzz_api.toml).
EVENTS = {
    "name": "events",
    "columns": [
        {"name": "id", "type": "BIGINT", "nullable": False},
        {"name": "kind", "type": "VARCHAR"},
        {"name": "value", "type": "DOUBLE"},
    ],
    "primary_key": ["id"],
}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scenarios.fuzz_api", description=__doc__)
    parser.add_argument("--max-examples", type=int, default=100, help="per operation")
    parser.add_argument("--seed", type=int, default=20261202)
    parser.add_argument("--phases", default="examples,coverage,fuzzing")
    parser.add_argument("--report-dir", type=Path, default=Path("reports") / "fuzz")
    return parser.parse_args(argv)


def schemathesis_command(args: argparse.Namespace, base_url: str) -> list[str]:
    cli = Path(sys.executable).with_name("schemathesis")
    return [
        str(cli),
        "--config-file",
        str(CONFIG),
        "run",
        str(SCHEMA),
        "--url",
        base_url,
        "--header",
        f"Authorization: Bearer {KEY}",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        args.phases,
        "--max-examples",
        str(args.max_examples),
        "--seed",
        str(args.seed),
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--suppress-health-check",
        "all",
        "--report",
        "junit,pytest",
        "--report-dir",
        str(args.report_dir),
        "--no-color",
    ]


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    # Small limits keep every generated query and ingest cheap on a CI machine.
    with Server(
        DUCKMESH_QUERY_TIMEOUT_MS="5000",
        DUCKMESH_MAX_CONSISTENCY_TIMEOUT_MS="2000",
        DUCKMESH_CONSISTENCY_TIMEOUT_MS="1000",
    ) as srv:
        with srv.client() as client:
            r = client.post("/v1/tables", json=EVENTS)
            r.raise_for_status()
        code = subprocess.call(schemathesis_command(args, srv.base_url), cwd=ROOT)
        if code != 0:
            print(srv.log()[-20_000:], file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
