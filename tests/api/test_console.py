"""The web console at ``/ui/``: its files over HTTP, then the page in a real
headless Chromium (Debian's, driven by Playwright) against the real app:
the page loads, a key connects it, tables and columns appear, a query's rows
and snapshot show, an older snapshot answers (time travel), a CSV downloads,
and an error shows its error_code readably."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
import trio

from duckmesh.api.openapi import load_openapi
from duckmesh.errors import ERROR_CODES
from tests.api.helpers import assert_error
from tests.fixtures import BOOTSTRAP_KEY, ORDERS, LiveServer

CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run installs it)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000
CONSOLE_DIR = Path(__file__).resolve().parents[2] / "duckmesh" / "api" / "console"


async def test_root_redirects_to_the_console_and_its_files_are_served(
    server: LiveServer,
) -> None:
    anon = {"Authorization": ""}
    r = await server.client.get("/", headers=anon)
    assert (r.status_code, r.headers["location"]) == (302, "/ui/")
    r = await server.client.get("/ui/", headers=anon)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert 'src="console.js"' in r.text
    assert "http" not in r.text.replace("http-equiv", "")  # no external resource
    for name, media in (("console.js", "text/javascript"), ("console.css", "text/css")):
        r = await server.client.get(f"/ui/{name}", headers=anon)
        assert (r.status_code, r.headers["content-type"]) == (200, f"{media}; charset=utf-8")
    documented = load_openapi()["paths"]["/ui/{name}"]["get"]["parameters"][0]["schema"]["enum"]
    assert sorted(documented) == sorted(p.name for p in CONSOLE_DIR.iterdir())
    for name in ("nope.js", "..%2Fopenapi.json", "%2e%2e"):
        err = assert_error(await server.client.get(f"/ui/{name}", headers=anon), 404, "NOT_FOUND")
        assert "console" in err["message"] or "route" in err["message"]


def _chromium_missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"Chromium not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (the dev extra has it)"
    return None


async def _two_snapshots(server: LiveServer) -> tuple[int, int]:
    await server.create_table(ORDERS)
    snapshots = []
    for first in (1, 4):
        records = [
            {"idempotency_key": f"o{n}", "payload": {"order_id": n, "status": "new", "amount": n}}
            for n in range(first, first + 3)
        ]
        r = await server.ingest("orders", records, wait_for_visibility=True)
        assert r.status_code == 200, r.text
        q = await server.query("select 1", min_visibility_token=r.json()["max_visibility_token"])
        snapshots.append(q.json()["snapshot_id"])
    return snapshots[0], snapshots[1]


async def test_the_console_in_a_real_browser(server: LiveServer, tmp_path: Path) -> None:
    missing = _chromium_missing()
    if missing:
        pytest.skip(missing)
    first, latest = await _two_snapshots(server)
    seen = await trio.to_thread.run_sync(_browse, server.base_url, first, tmp_path)
    assert seen["tables"] == ["orders"]
    assert "order_id BIGINT key" in seen["columns"]
    assert seen["rows"] == [["1", "new", "1"], ["6", "new", "6"]]
    assert seen["snapshot"] == f"snapshot {latest}"
    assert seen["watermark"].startswith("watermark ")
    assert "scanned" in seen["scanned"]
    assert seen["time_travel"] == (["3"], f"snapshot {first}")
    assert seen["csv"][0] == ["order_id", "status"]
    assert len(seen["csv"]) == 7
    code, message = seen["error"]
    assert code in ERROR_CODES
    assert "nope" in message
    assert seen["after_reload"] == ["orders"]  # the key stayed for the session


def _browse(base_url: str, first_snapshot: int, downloads: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    seen: dict[str, Any] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(accept_downloads=True)
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(base_url + "/")
            assert page.url == base_url + "/ui/"
            page.fill("#api-key", BOOTSTRAP_KEY)
            page.click("#connect")
            page.wait_for_selector("#tables button.table")
            seen["tables"] = page.locator("#tables button.table").all_inner_texts()
            seen["columns"] = page.locator("#tables ul li").all_inner_texts()

            rows = _run(page, "SELECT order_id, status, amount FROM orders WHERE order_id IN (1, 6)"
                        " ORDER BY 1")  # fmt: skip
            seen["rows"] = rows
            for part in ("snapshot", "watermark", "scanned"):
                seen[part] = page.inner_text(f"#meta-{part}")

            page.select_option("#snapshot", str(first_snapshot))
            seen["time_travel"] = (
                [r[0] for r in _run(page, "SELECT count(*) FROM orders")],
                page.inner_text("#meta-snapshot"),
            )
            page.select_option("#snapshot", "")

            page.fill("#sql", "SELECT order_id, status FROM orders ORDER BY 1")
            with page.expect_download() as info:
                page.click("#download-csv")
            path = downloads / "result.csv"
            info.value.save_as(path)
            seen["csv"] = list(csv.reader(io.StringIO(path.read_text())))

            page.fill("#sql", "SELECT * FROM nope")
            page.click("#run")
            page.wait_for_selector("#error:not([hidden])")
            seen["error"] = (page.inner_text("#error-code"), page.inner_text("#error-message"))

            page.reload()
            page.wait_for_selector("#tables button.table")
            seen["after_reload"] = page.locator("#tables button.table").all_inner_texts()
        finally:
            browser.close()
    return seen


def _run(page: Any, sql: str) -> list[list[str]]:
    """Run ``sql`` in the console and read the grid once the new result is in."""
    page.fill("#sql", sql)
    page.evaluate("document.getElementById('meta').textContent = ''")
    page.click("#run")
    page.wait_for_selector("#meta-rows")
    rows: list[list[str]] = page.eval_on_selector_all(
        "#grid tbody tr", "trs => trs.map(tr => [...tr.cells].map(td => td.textContent))"
    )
    return rows
