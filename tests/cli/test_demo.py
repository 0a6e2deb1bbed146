"""``duckmesh demo --url``: the sample dataset lands in a real server through
the bulk Arrow path, and the three queries it prints answer there."""

from __future__ import annotations

import json
import shlex

import pytest
import trio

from duckmesh.cli.demo import split_rows
from tests.cli.helpers import run
from tests.fixtures import BOOTSTRAP_KEY, LiveServer

pytestmark = pytest.mark.usefixtures("clean_env")

ROWS = 3000


def printed_queries(out: str) -> list[dict[str, object]]:
    """The JSON bodies of the printed ``curl ... -d '{...}'`` lines."""
    bodies = []
    for line in out.splitlines():
        if line.strip().startswith("curl "):
            words = shlex.split(line)
            bodies.append(json.loads(words[words.index("-d") + 1]))
    return bodies


async def test_demo_creates_the_dataset_and_its_queries_answer(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("demo", "--url", server.base_url, "--api-key", BOOTSTRAP_KEY, "--rows", str(ROWS))
    code, out, err = await trio.to_thread.run_sync(lambda: run(capsys, *argv))
    assert code == 0, err
    counts = split_rows(ROWS)
    assert sum(counts.values()) == ROWS
    assert f"{server.base_url}/ui/" in out

    schema = (await server.client.get("/v1/ui/schema")).json()
    assert {t["name"] for t in schema["tables"]} >= set(counts)

    queries = printed_queries(out)
    assert len(queries) == 3
    assert [("min_visibility_token" in q) for q in queries] == [False, False, True]
    results = {}
    for n in (2, 0, 1):  # the one with the token first: then every row is visible
        r = await server.client.post("/v1/query", json=queries[n])
        assert r.status_code == 200, (queries[n], r.text)
        results[n] = r.json()
    by_country = results[0]["rows"]
    assert by_country
    assert sum(row[1] for row in by_country) <= counts["demo_orders"]
    assert results[1]["rows"]  # pages of the last 30 days
    assert results[2]["rows"] == [[counts["demo_events"]]]  # every loaded row is visible

    # A rerun loads nothing twice: every chunk comes back as a duplicate.
    code, out, err = await trio.to_thread.run_sync(lambda: run(capsys, *argv))
    assert code == 0, err
    r = await server.client.post("/v1/query", json=printed_queries(out)[2])
    assert r.json()["rows"] == [[counts["demo_events"]]]


def test_demo_with_a_url_needs_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "demo", "--url", "http://127.0.0.1:9")
    assert (code, out) == (2, "")
    assert err == "duckmesh demo: --url needs --api-key or DUCKMESH_API_KEY\n"


@pytest.mark.parametrize("rows", ["-5", "0", "lots"])
def test_demo_refuses_a_bad_row_count(capsys: pytest.CaptureFixture[str], rows: str) -> None:
    code, out, err = run(capsys, "demo", "--rows", rows)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert err.startswith("duckmesh demo: error: argument --rows: ")
