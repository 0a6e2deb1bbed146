"""``POST /v1/query/translate`` with a fake OpenAI-compatible provider server
(a third-party stand-in, named as such): the SQL comes back unrun and only
after the SQL checker passed it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.api.helpers import assert_error
from tests.fixtures import EVENTS, LiveServer, StartApp


class FakeOpenAIProvider:
    """A stand-in for an OpenAI-compatible ``/chat/completions`` endpoint:
    answers the queued replies in order and records every request."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, Any]] = []
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                fake.requests.append((self.path, dict(self.headers), body))
                status, reply = fake.replies.pop(0)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def answer(self, content: str, status: int = 200) -> None:
        self.replies.append((status, {"choices": [{"message": {"content": content}}]}))


@pytest.fixture
def fake_provider() -> Iterator[FakeOpenAIProvider]:
    fake = FakeOpenAIProvider()
    thread = threading.Thread(target=fake.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.httpd.shutdown()
        fake.httpd.server_close()


async def test_not_configured_is_404(server: LiveServer) -> None:
    r = await server.client.post("/v1/query/translate", json={"question": "how many?"})
    body = assert_error(r, 404, "NOT_CONFIGURED")
    assert "DUCKMESH_TRANSLATE_URL" in body["message"]


async def test_translate_returns_checked_sql_never_runs_it(
    start_app: StartApp, fake_provider: FakeOpenAIProvider
) -> None:
    srv = await start_app(
        translate_url=fake_provider.url, translate_model="fake-model", translate_api_key="sk-t"
    )
    await srv.create_table(EVENTS)
    fake_provider.answer("Here you go:\n```sql\nSELECT kind, count(*) FROM events GROUP BY 1;\n```")
    r = await srv.client.post("/v1/query/translate", json={"question": "events per kind?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["sql"] == "SELECT kind, count(*) FROM events GROUP BY 1"
    assert (body["provider"], body["model"]) == ("openai-compatible", "fake-model")
    path, headers, sent = fake_provider.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-t"
    assert sent["model"] == "fake-model"
    assert 'CREATE TABLE "events" ("id" BIGINT' in sent["messages"][0]["content"]
    assert sent["messages"][1] == {"role": "user", "content": "events per kind?"}

    # A statement the checker refuses is reported, with the SQL, and not run.
    fake_provider.answer("DROP TABLE events")
    r = await srv.client.post("/v1/query/translate", json={"question": "remove it"})
    refused = assert_error(r, 400, "SQL_REJECTED")
    assert refused["context"]["sql"] == "DROP TABLE events"
    assert "not run" in refused["message"]
    assert (await srv.client.get("/v1/tables/events")).status_code == 200

    fake_provider.answer("oops", status=500)
    r = await srv.client.post("/v1/query/translate", json={"question": "x"})
    assert assert_error(r, 502, "UPSTREAM_FAILED")["context"]["status"] == 500

    r = await srv.client.post("/v1/query/translate", json={"question": ""})
    assert_error(r, 400, "VALIDATION_FAILED")
    r = await srv.client.post("/v1/query/translate", json={"sql": "select 1"})
    assert_error(r, 400, "VALIDATION_FAILED")
    assert len(fake_provider.requests) == 3  # bad bodies never reach the provider
