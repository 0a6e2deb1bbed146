"""JSON results are built from small Arrow batches: memory stays bounded,
and the values are exactly those of DuckDB's own Python conversion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb

from duckmesh.query._convert import column_plan, convert_column
from duckmesh.query._json_result import arrow_safe, rows_from_arrow
from duckmesh.query.sandbox import QueryLimits, SnapshotDatabase
from tests.fixtures import REPO

# Every type the Arrow path takes, with NULLs, NaN, nesting and extremes.
WIDE = """
SELECT (i % 100)::TINYINT a, i::UBIGINT b, (i * 1e16)::BIGINT c, i / 3 d, (i / 3)::FLOAT e,
       (i * 1.25)::DECIMAL(18, 3) f, (i * 10)::DECIMAL(38, 10) g, 'é' || i h,
       CASE WHEN i % 2 = 0 THEN NULL ELSE 'x' END n, (i % 2 = 0) bo,
       ('\\x00' || i)::BLOB bl, gen_random_uuid() IS NULL u0,
       '2b1f0a52-3a8e-4b3b-9ad0-6b1c3f5e2d10'::UUID u, DATE '2024-02-29' + i::INTEGER dt,
       TIME '12:34:56.789' t, TIMESTAMP '2024-01-01 00:00:00.123456' + INTERVAL (i) HOUR ts,
       TIMESTAMPTZ '2024-01-01 00:00:00+02' ttz, TIMESTAMP_S '2024-01-01 01:02:03' tss,
       '{"k": [1, 2.5, null]}'::JSON j, [i, NULL, i + 1] l, [[1.5], []] ll,
       {'x': i, 'y': [{'z': 'nan'::DOUBLE}]} st, 'nan'::DOUBLE nan, NULL::INTEGER nul,
       ([1, 2, 3])::INTEGER[3] arr
FROM range(300) r(i)
"""


def _native(sql: str) -> list[list[object]]:
    conn = duckdb.connect(":memory:")
    try:
        conn.execute("SET TimeZone = 'UTC'")
        cursor = conn.execute(sql)
        plans = [column_plan(t) for _, t, *_ in cursor.description or []]
        columns = list(zip(*cursor.fetchall(), strict=True))
    finally:
        conn.close()
    converted = [
        convert_column(values, plan.convert) if plan.convert else list(values)
        for plan, values in zip(plans, columns, strict=True)
    ]
    return [list(row) for row in zip(*converted, strict=True)]


def _execute(sql: str, tmp_path: Path) -> list[list[object]]:
    limits = QueryLimits(row_limit=1000)
    db = SnapshotDatabase([], allowed_dir=str(tmp_path), limits=limits)
    try:
        result = db.execute(sql, None, limits)
    finally:
        db.close()
    assert not result.truncated
    return result.rows


def test_arrow_path_values_equal_duckdbs_own(tmp_path: Path) -> None:
    conn = duckdb.connect(":memory:")
    try:
        conn.execute("SET TimeZone = 'UTC'")
        relation = conn.sql(WIDE)
        types = list(relation.types)
        assert all(arrow_safe(t) for t in types)  # so the sandbox takes the Arrow path
        # ... and keeps it (no value sends it back to the native path).
        rows, _ = rows_from_arrow(relation.to_arrow_reader(64), types, 1000, 1 << 30)
    finally:
        conn.close()
    assert rows == _native(WIDE)
    assert _execute(WIDE, tmp_path) == rows


def test_values_arrow_cannot_carry_fall_back_to_the_native_path(tmp_path: Path) -> None:
    sql = (
        "SELECT * FROM (VALUES (DATE '2024-01-01', TIMESTAMP '2024-01-01'),"
        " ('infinity'::DATE, '-infinity'::TIMESTAMP)) v(d, ts)"
    )
    assert _execute(sql, tmp_path) == _native(sql)
    mixed = "SELECT 170141183460469231731687303715884105727::HUGEINT h, INTERVAL 90 MINUTE iv"
    assert (
        _execute(mixed, tmp_path)
        == _native(mixed)
        == [[170141183460469231731687303715884105727, "PT1H30M"]]
    )


# Peak RSS growth of a fresh process while it builds one JSON result of
# 8,192 rows of 100 kB strings (cut at 64 MiB of JSON), sampled every 2 ms.
_PROBE = """
import sys, tempfile, threading, time
import psutil
from duckmesh.query.sandbox import QueryLimits, SnapshotDatabase
limit_mb = int(sys.argv[1])
limits = QueryLimits(memory_limit_mb=limit_mb, threads=2, row_limit=10000)
db = SnapshotDatabase([], allowed_dir=tempfile.mkdtemp(), limits=limits)
db.execute("select 1", None, limits)  # warm up: DuckDB's own allocations are not the result's
me = psutil.Process()
base = peak = me.memory_info().rss
done = False
def sample():
    global peak
    while not done:
        peak = max(peak, me.memory_info().rss)
        time.sleep(0.002)
watcher = threading.Thread(target=sample)
watcher.start()
result = db.execute("select repeat('x', 100000) s from range(8192)", None, limits)
done = True
watcher.join()
print(len(result.rows), result.truncated, (peak - base) >> 20)
"""


def test_building_a_json_result_stays_within_the_memory_limit() -> None:
    limit_mb = 320
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(limit_mb)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows, truncated, grown_mb = done.stdout.split()
    assert truncated == "True"
    assert 600 < int(rows) < 700  # the 64 MiB JSON cut
    # Before: DuckDB's fetchmany held several 200 MB vectors (686 MB here).
    assert int(grown_mb) < limit_mb, done.stdout
