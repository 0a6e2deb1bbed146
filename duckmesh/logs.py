"""Structured logging: JSON lines by default, a readable console on a TTY.

Every line carries ``timestamp``, ``level``, ``service`` (a server's also
``role`` and ``pid``) and, where known,
``tenant_id``, ``trace_id`` and ``error_code`` (bound through contextvars by
the API and actors). Secrets are never passed to the logger.

Records of the standard ``logging`` module (Hypercorn, Quart, libraries) go
through the same processors and renderer (structlog's ``ProcessorFormatter``
on the root logger), so a JSON log holds nothing but JSON lines: a traceback
is one ``exception`` field, never multi-line text.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# Loggers that come with handlers (or get them later) of their own: they
# propagate to the root handler instead. "duckmesh" is the Quart app's logger
# (Quart names it after the app).
FRAMEWORK_LOGGERS = (
    "hypercorn.error",
    "hypercorn.access",
    "quart.app",
    "quart.serving",
    "duckmesh",
)


def configure_logging(
    fmt: str = "auto", level: str = "info", service: str = "duckmesh", role: str | None = None
) -> None:
    """``role`` (``duckmesh serve``'s) and the pid go on every line, so one
    trace id can be followed across the processes of a group, which share a log."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    pid = os.getpid()

    def add_service(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event.setdefault("service", service)
        if role is not None:
            event.setdefault("role", role)
            event.setdefault("pid", pid)
        return event

    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if use_console
        else structlog.processors.JSONRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_service,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(shared, renderer, _LEVELS[level])


def _route_stdlib_logging(shared: list[Any], renderer: Any, level: int) -> None:
    """One root handler rendering stdlib records like structlog's own events."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for name in FRAMEWORK_LOGGERS:
        framework = logging.getLogger(name)
        framework.handlers.clear()
        framework.propagate = True
    logging.captureWarnings(True)  # warnings.warn lines become events too


BOOTSTRAP_KEY_EVENT = "bootstrap_api_key"


def show_bootstrap_key(key: str, stream: TextIO | None = None) -> None:
    """Print a generated bootstrap key, the only time it is ever shown: a
    framed block for a person at a terminal, else one JSON event (a log
    collector keeps every line parseable). Written directly, not through the
    logger: log events never carry secrets, and this one line must."""
    out = sys.stderr if stream is None else stream
    note = "created tenant 'default' with an all-roles API key; it is shown once, store it now"
    if out.isatty():
        rule = "=" * 72
        lines = [rule, f"DuckMesh bootstrap: {note}.", f"  API key (shown once): {key}", rule]
        out.write("\n".join(lines) + "\n")
    else:
        stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)(None, "", {})
        event = {
            "event": BOOTSTRAP_KEY_EVENT,
            "message": note,
            "tenant_id": "default",
            "api_key": key,
            "service": "duckmesh",
            "level": "warning",
            **stamp,
        }
        out.write(json.dumps(event) + "\n")
    out.flush()
