"""Keep-alive connections survive error responses to requests with a body.

Found by the API fuzzer: a 401/404/405 answered before Hypercorn had read
the request body made it close the connection under the client, which then
waited for a response that never came (about one request in ten with
``httpx`` or ``requests`` against ``duckmesh serve``).
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.fixtures import BOOTSTRAP_KEY, ServerProcess

BODY = b'{"snapshot_id": 1, "pinned": true, "reason": ""}'
CASES = [
    ("PUT", "/v1/snapshots/pin", f"Bearer {BOOTSTRAP_KEY}", 400),  # method not allowed
    ("POST", "/v1/nothing", f"Bearer {BOOTSTRAP_KEY}", 404),
    ("POST", "/v1/tables", "Bearer not-a-key", 401),
]


@pytest.mark.slow
def test_error_responses_keep_the_connection_usable(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    srv = spawn_server()
    srv.start()
    for method, path, auth, status in CASES:
        headers = {"Authorization": auth, "Content-Type": "application/json"}
        with httpx.Client(base_url=srv.base_url, headers=headers, timeout=5) as client:
            for n in range(100):
                # A ReadTimeout here was the hang.
                r = client.request(method, path, content=BODY)
                assert r.status_code == status, (method, path, n, r.text)
