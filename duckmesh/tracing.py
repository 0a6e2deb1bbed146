"""Trace ids carried past the API request (ingest -> bus batch -> commit ->
snapshot): a bounded, ordered, duplicate-free list of them.

A bus batch and a snapshot's metadata name at most ``MAX_TRACE_IDS`` trace
ids: enough to follow a write across processes, never unbounded growth for
a flush of thousands of requests.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog

MAX_TRACE_IDS = 64


def bounded(trace_ids: Iterable[str | None], limit: int = MAX_TRACE_IDS) -> list[str]:
    """The first ``limit`` distinct trace ids, in order (None skipped)."""
    out: dict[str, None] = {}
    for trace_id in trace_ids:
        if trace_id and trace_id not in out:
            out[trace_id] = None
            if len(out) >= limit:
                break
    return list(out)


def current() -> str | None:
    """The trace id bound to this task's log context (the API binds one per
    request), or None."""
    value = structlog.contextvars.get_contextvars().get("trace_id")
    return value if isinstance(value, str) else None
