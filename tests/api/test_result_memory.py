"""Result acceptance at scale: a 1M-row Arrow result equals the JSON result,
and a 10M-row Arrow export keeps the server within the query memory limit
plus a fixed margin (the server runs in this process: its RSS is sampled)."""

from __future__ import annotations

import threading
from pathlib import Path

import psutil
import pyarrow as pa

from tests.fixtures import StartApp

ARROW = "application/vnd.apache.arrow.stream"


async def test_a_million_row_arrow_result_equals_the_json_result(start_app: StartApp) -> None:
    srv = await start_app()
    sql = "SELECT i, i / 2 AS half FROM range(1000000) t(i) ORDER BY i"
    body = {"sql": sql, "row_limit": 1_000_000}
    r = await srv.client.post("/v1/query", json=body, headers={"Accept": ARROW}, timeout=120)
    assert r.status_code == 200, r.text
    table = pa.ipc.open_stream(r.content).read_all()
    assert r.headers["DuckMesh-Truncated"] == "unknown"  # larger than the read-ahead
    r = await srv.client.post("/v1/query", json=body, timeout=120)
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["truncated"] is False
    assert table.num_rows == len(result["rows"]) == 1_000_000
    assert [c["name"] for c in result["columns"]] == table.column_names
    columns = list(zip(*result["rows"], strict=True))
    for i, name in enumerate(table.column_names):
        assert table.column(name).to_pylist() == list(columns[i]), name


async def test_a_ten_million_row_arrow_export_stays_within_the_memory_limit(
    start_app: StartApp, tmp_path: Path
) -> None:
    limit_mb, margin_mb = 64, 96
    srv = await start_app(
        query_memory_limit_mb=limit_mb,
        query_max_row_limit=10_000_000,
        query_stream_readahead_mb=1,
        query_timeout_ms=120_000,
    )
    me = psutil.Process()
    base = peak = me.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, me.memory_info().rss)
            done.wait(0.005)

    watcher = threading.Thread(target=sample)
    watcher.start()
    received = 0
    body = {"sql": "SELECT i, i * 2 AS j FROM range(10000000) t(i)", "row_limit": 10_000_000}
    path = tmp_path / "export.arrows"
    try:
        with path.open("wb") as out:  # to disk as it comes: the client holds no result
            async with srv.client.stream(
                "POST", "/v1/query", json=body, headers={"Accept": ARROW}, timeout=120
            ) as r:
                assert r.status_code == 200
                async for chunk in r.aiter_bytes():
                    received += len(chunk)
                    out.write(chunk)
    finally:
        done.set()
        watcher.join()
    assert received > 150 << 20  # 160 MB of Arrow went through
    with pa.memory_map(str(path)) as source:
        assert pa.ipc.open_stream(source).read_all().num_rows == 10_000_000
    grown_mb = (peak - base) >> 20
    assert grown_mb < limit_mb + margin_mb, grown_mb
