"""The unit of supervision: a named, long-running task that keeps its own statistics.

Exists so every background job in DuckMesh (ingest, commit, compaction, ...) has the same shape:
a ``run()`` coroutine that reports readiness through ``task_status``, watches ``stop_requested``
to finish in-flight work, and exposes a statistics snapshot. Guarantees: every state change is
mirrored into the ``duckmesh_actor_up`` gauge, and every restart into
``duckmesh_actor_restarts_total``, both labelled with the actor's name.
"""

from __future__ import annotations

import abc
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from duckmesh import metrics
from duckmesh.supervisors._statistics import ActorState, ActorStatistics, describe_error


class Actor(abc.ABC):
    """A long-running task with a name and statistics.

    Subclasses implement :meth:`run`. It should call ``task_status.started()`` once the actor is
    ready to do work; returning normally means "done". A well-behaved actor watches
    :attr:`stop_requested` and, once it is set, finishes the work it has in flight and returns.
    Its supervisor cancels it if it takes longer than the policy's ``shutdown_grace``.

    If ``mailbox_size > 0`` the actor gets a bounded mailbox: other code sends to
    :attr:`mailbox`, the actor receives from ``self._inbox``. The mailbox outlives restarts, so
    messages queued while the actor was backing off are still delivered; the actor must therefore
    not close ``self._inbox``.
    """

    def __init__(self, name: str, *, mailbox_size: int = 0) -> None:
        if not name or "/" in name:
            raise ValueError(f"actor name must be non-empty and contain no '/': {name!r}")
        if mailbox_size < 0:
            raise ValueError(f"mailbox_size must be >= 0, got {mailbox_size}")
        self.name = name
        self.stop_requested = trio.Event()
        self.mailbox: trio.MemorySendChannel[object] | None = None
        self._inbox: trio.MemoryReceiveChannel[object] | None = None
        if mailbox_size > 0:
            self.mailbox, self._inbox = trio.open_memory_channel[object](mailbox_size)
        self._state = ActorState.STOPPED
        self._restarts = 0
        self._last_error: str | None = None
        self._last_error_at: float | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self._state.value}>"

    @abc.abstractmethod
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Do the actor's work; call ``task_status.started()`` once ready."""

    def statistics(self) -> ActorStatistics:
        """A frozen snapshot of this actor's state, restart count and last error."""
        return ActorStatistics(
            name=self.name,
            state=self._state,
            restarts=self._restarts,
            last_error=self._last_error,
            last_error_at=self._last_error_at,
        )

    def request_stop(self) -> None:
        """Ask the actor to finish in-flight work and return. Never blocks; idempotent."""
        self.stop_requested.set()

    # Bookkeeping used by supervisors. Kept here so the metric updates live next to the state.

    def _set_state(self, state: ActorState) -> None:
        self._state = state
        metrics.ACTOR_UP.labels(actor=self.name).set(1 if state is ActorState.RUNNING else 0)

    def _record_error(self, exc: BaseException) -> None:
        self._last_error = describe_error(exc)
        self._last_error_at = time.time()

    def _record_restart(self) -> None:
        self._restarts += 1
        metrics.ACTOR_RESTARTS.labels(actor=self.name).inc()

    def _rearm_stop(self) -> None:
        """Give the actor a fresh, unset ``stop_requested`` before it is (re)started."""
        if self.stop_requested.is_set():
            self.stop_requested = trio.Event()


class FunctionActor(Actor):
    """An actor whose body is a plain coroutine function.

    ``fn`` may accept a ``task_status`` keyword, in which case it must call
    ``task_status.started()`` itself; otherwise the actor counts as running as soon as ``fn`` is
    called.
    """

    def __init__(self, name: str, fn: Callable[..., Awaitable[None]]) -> None:
        super().__init__(name)
        self._fn = fn
        self._takes_task_status = _accepts_keyword(fn, "task_status")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._takes_task_status:
            await self._fn(task_status=task_status)
        else:
            task_status.started()
            await self._fn()


class StartedSignal(trio.TaskStatus[None]):
    """A ``task_status`` that runs a callback when the actor reports it has started.

    Supervisors hand one of these to every (re)start, because Trio's own task status can only be
    used once per task while a supervised actor may start many times.
    """

    def __init__(self, on_started: Callable[[], None]) -> None:
        self._on_started = on_started
        self.called = False

    def started(self, value: None = None) -> None:
        if self.called:
            raise RuntimeError("called 'started' twice on the same task status")
        self.called = True
        self._on_started()


def _accepts_keyword(fn: Callable[..., Any], keyword: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.name == keyword and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        for p in parameters
    )
