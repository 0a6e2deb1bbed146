"""A worker thread feeding a Trio consumer through a bounded memory channel.

Why it exists: a streamed query result is produced by blocking DuckDB and
pyarrow calls, and consumed by an HTTP response in Trio. The thread runs the
work with an ``emit`` callback that blocks while the channel is full (so the
server holds at most ``CHANNEL_SIZE`` chunks per query) and fails when the
consumer has gone away or the deadline has passed, which ends the work; the
query's slots are released when the thread ends, never before.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from duckmesh.errors import DuckMeshError
from duckmesh.query.stream import StreamHead

__all__ = ["CHANNEL_SIZE", "start_stream"]

CHANNEL_SIZE = 4
Work = Callable[[Callable[[object], None]], None]


def _timeout(timeout_s: float) -> DuckMeshError:
    return DuckMeshError(
        "QUERY_TIMEOUT",
        f"query exceeded the time limit of {timeout_s:g} s and is being stopped",
        timeout_s=timeout_s,
    )


async def start_stream(
    slots: contextlib.ExitStack, work: Work, timeout_s: float
) -> tuple[StreamHead, AsyncIterator[bytes]]:
    """Start ``work`` in a thread; wait for its ``StreamHead`` (or its error).

    The whole stream, head and chunks, runs under ``timeout_s``: a consumer
    that stops reading cannot hold the query's slots past it."""
    send, receive = trio.open_memory_channel[object](CHANNEL_SIZE)
    token = trio.lowlevel.current_trio_token()
    deadline = time.monotonic() + timeout_s

    async def send_in_time(item: object) -> None:
        with trio.fail_after(max(0.0, deadline - time.monotonic())):
            await send.send(item)

    def emit(item: object) -> None:
        trio.from_thread.run(send_in_time, item, trio_token=token)

    def run() -> None:
        try:
            work(emit)
        except Exception as exc:  # handed to the consumer, if it still listens
            with contextlib.suppress(Exception):
                emit(exc)

    def finished(_: Any) -> None:
        def close() -> None:
            send.close()
            slots.close()

        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(close)

    try:
        trio.lowlevel.start_thread_soon(run, finished)
    except BaseException:
        slots.close()
        raise
    try:
        with trio.fail_after(timeout_s):
            head = await receive.receive()
    except trio.TooSlowError:
        receive.close()
        raise _timeout(timeout_s) from None
    except trio.EndOfChannel:  # pragma: no cover - work always emits a head or an error
        raise DuckMeshError("INTERNAL", "the query ended without a result") from None
    except BaseException:
        receive.close()
        raise
    if isinstance(head, BaseException):
        receive.close()
        raise head
    if not isinstance(head, StreamHead):  # pragma: no cover - work emits the head first
        receive.close()
        raise DuckMeshError("INTERNAL", "the query stream began without its head")
    return head, _chunks(receive)


async def _chunks(receive: trio.MemoryReceiveChannel[object]) -> AsyncIterator[bytes]:
    """The chunks; closing early (client gone) makes the worker's next emit fail."""
    with receive:
        async for item in receive:
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, bytes) and item:
                yield item
