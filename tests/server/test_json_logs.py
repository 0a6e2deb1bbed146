"""DUCKMESH_LOG_FORMAT=json: every line a process writes is one JSON object,
the web framework's records and tracebacks included (one ``exception`` field)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import structlog
from quart_trio import QuartTrio

from duckmesh.logs import BOOTSTRAP_KEY_EVENT, configure_logging, show_bootstrap_key
from tests.fixtures import BOOTSTRAP_KEY, ServerProcess


def _parse_every_line(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "nothing was logged"
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\n--- whole log ---\n{text}")
    return events


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, config = list(root.handlers), root.level, structlog.get_config()
    yield
    root.handlers = handlers
    root.setLevel(level)
    structlog.configure(**config)


@pytest.mark.slow
def test_served_log_is_json_through_an_actor_crash_and_a_routing_404(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    # The fault point makes the coordinator raise once (an internal error
    # with a traceback); the supervisor restarts it.
    srv = spawn_server(
        DUCKMESH_ENABLE_FAULTS="1",
        DUCKMESH_FAULTS="coordinator.before_claim=raise:1",
        DUCKMESH_LOG_LEVEL="info",
    )
    srv.start()
    headers = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
    missing = httpx.get(srv.base_url + "/v1/no-such-route", headers=headers, timeout=10)
    assert missing.status_code == 404
    assert missing.json()["error_code"] == "NOT_FOUND"
    deadline = time.monotonic() + 30
    while "Traceback" not in srv.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert srv.terminate() == 0
    events = _parse_every_line(srv.logs())
    crashes = [e for e in events if "exception" in e]
    assert crashes, "the injected fault left no traceback"
    assert "Traceback" in crashes[0]["exception"]
    assert all("level" in e and "timestamp" in e for e in events)


async def test_framework_tracebacks_are_one_json_line(
    capfd: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    # An unexpected exception in a Quart handler is logged by Quart's own
    # logger (named after the app), which used to print plain multi-line text.
    configure_logging("json", "info")
    app = QuartTrio("duckmesh")

    @app.route("/boom")
    async def boom() -> str:
        raise RuntimeError("handler blew up")

    response = await app.test_client().get("/boom")
    assert response.status_code == 500
    logging.getLogger("hypercorn.error").warning("from %s", "hypercorn")
    logging.getLogger("some.library").info("plain stdlib record")
    events = _parse_every_line(capfd.readouterr().err)
    failed = [e for e in events if e.get("logger") == "duckmesh"]
    assert len(failed) == 1
    assert failed[0]["level"] == "error"
    assert "RuntimeError: handler blew up" in failed[0]["exception"]
    by_logger = {e.get("logger"): e for e in events}
    assert by_logger["hypercorn.error"]["event"] == "from hypercorn"
    assert by_logger["some.library"]["service"] == "duckmesh"


def test_bootstrap_key_is_one_json_event_off_a_terminal(tmp_path: Any) -> None:
    path = tmp_path / "stderr"
    with open(path, "w") as out:
        show_bootstrap_key("dmk_example", out)
    (event,) = _parse_every_line(path.read_text())
    assert event["event"] == BOOTSTRAP_KEY_EVENT
    assert event["api_key"] == "dmk_example"
    assert "shown once" in event["message"]


def test_bootstrap_key_is_a_marked_block_on_a_terminal() -> None:
    parent, child = os.openpty()
    with open(child, "w") as tty:
        show_bootstrap_key("dmk_example", tty)
    shown = os.read(parent, 4096).decode()
    os.close(parent)
    lines = [line for line in shown.splitlines() if line.strip()]
    assert lines[0] == lines[-1]
    assert set(lines[0]) == {"="}
    assert "API key (shown once): dmk_example" in shown
    assert not shown.lstrip().startswith("{")
