"""SIGKILL of a real ``duckmesh serve`` during a stream of bulk uploads: after
a restart every acknowledged upload is visible exactly once and none is half
visible; an upload in flight at the kill, retried with its key, lands once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial

import httpx

from tests.fixtures import BOOTSTRAP_KEY, EVENTS, ServerProcess

ROWS = 400  # per upload


def _csv(batch: int) -> bytes:
    lines = ["id,kind,value"]
    lines += [f"{batch * 100_000 + i},b{batch},{i / 3}" for i in range(ROWS)]
    return ("\n".join(lines) + "\n").encode()


def _send(client: httpx.Client, batch: int) -> httpx.Response:
    return client.post(
        "/v1/ingest/events",
        content=_csv(batch),
        headers={"Content-Type": "text/csv", "Idempotency-Key": f"batch-{batch}"},
    )


class Uploader(threading.Thread):
    def __init__(self, base_url: str, first: int) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(
            base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
        )
        self.next = first
        self.acked: list[int] = []
        self.unacked: list[int] = []
        self.max_token = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            batch = self.next
            self.next += 1
            try:
                r = _send(self.client, batch)
            except httpx.TransportError:
                self.unacked.append(batch)
                return  # the server is gone
            if r.status_code == 200:
                self.acked.append(batch)
                self.max_token = max(self.max_token, r.json()["max_visibility_token"])
            else:
                self.unacked.append(batch)
        self.client.close()


def _wait_for(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _has_acked(up: Uploader, count: int) -> bool:
    return len(up.acked) >= count


def test_sigkill_during_uploads(spawn_server: Callable[..., ServerProcess]) -> None:
    server = spawn_server()
    server.start()
    headers = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client:
        assert client.post("/v1/tables", json=EVENTS).status_code == 201
    acked: list[int] = []
    unacked: list[int] = []
    top = 0
    for round_no in range(2):
        up = Uploader(server.base_url, first=round_no * 1000)
        up.start()
        _wait_for(partial(_has_acked, up, 5 + round_no * 3))
        server.kill()
        up.stop.set()
        up.join(30)
        acked += up.acked
        unacked += up.unacked
        top = max(top, up.max_token)
        server.start()

    with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as client:
        # Retrying what was in flight: each lands exactly once.
        for batch in unacked:
            r = _send(client, batch)
            assert r.status_code == 200, r.text
            top = max(top, r.json()["max_visibility_token"])
        q = client.post(
            "/v1/query",
            json={
                "sql": "select kind, count(*), count(distinct id) from events group by kind",
                "min_visibility_token": top,
                "consistency_timeout_ms": 30_000,
            },
        )
        assert q.status_code == 200, q.text
        counts = {kind: (n, distinct) for kind, n, distinct in q.json()["rows"]}
    expected = {f"b{b}" for b in acked + unacked}
    assert set(counts) == expected, (sorted(counts), sorted(expected))
    assert all(v == (ROWS, ROWS) for v in counts.values()), counts  # none half-visible
