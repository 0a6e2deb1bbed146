"""Supervisors: actors that run other actors and restart them when they fail.

Exists so background work in DuckMesh survives crashes without each actor writing its own retry
loop, and so that a failure nobody can fix locally surfaces as one clear error at the top.
Guarantees:

- children start in order, each fully started (``task_status.started()``) before the next;
- a crash is restarted per the :class:`RestartPolicy` (one_for_one or one_for_all, with backoff);
- more than ``max_restarts`` restarts within ``within_seconds`` stops the children gracefully and
  raises :class:`EscalationError` to the parent;
- ``trio.Cancelled`` (and any other ``BaseException``) is never treated as a failure: it passes
  through untouched and the children simply end up ``STOPPED``;
- on :meth:`Supervisor.stop` every descendant's ``stop_requested`` is set at once, and whatever is
  still running ``shutdown_grace`` seconds later is cancelled.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable, Sequence

import structlog
import trio

from duckmesh.supervisors._actor import Actor, StartedSignal
from duckmesh.supervisors._errors import EscalationError
from duckmesh.supervisors._policy import RestartPolicy, RestartWindow
from duckmesh.supervisors._statistics import ActorState, ActorStatistics, describe_error

_log = structlog.get_logger("duckmesh.supervisors")

_DEFAULT_POLICY = RestartPolicy()
_GROUP = ""  # restart-window key for one_for_all group restarts
_LIVE_STATES = (ActorState.STARTING, ActorState.RUNNING, ActorState.BACKING_OFF)


class Supervisor(Actor):
    """An actor that starts ``children`` in order and keeps them running under ``policy``.

    A supervisor is itself an actor, so supervisors nest: a child supervisor that escalates is,
    to its parent, just a child that crashed. A supervisor returns normally once all its children
    have finished for good (they returned, or a stop was requested).
    """

    def __init__(
        self, name: str, children: Sequence[Actor], policy: RestartPolicy = _DEFAULT_POLICY
    ) -> None:
        super().__init__(name)
        duplicates = [n for n, c in collections.Counter(c.name for c in children).items() if c > 1]
        if duplicates:
            raise ValueError(f"supervisor {name!r} has children with the same name: {duplicates}")
        self.policy = policy
        self._children = tuple(children)
        self._rng = random.Random()  # noqa: S311 - backoff jitter, nothing secret
        self._finished: trio.Event | None = None
        self._reset_run_state()

    def _reset_run_state(self) -> None:
        # Everything a single run() owns; a restarted supervisor starts from a clean slate.
        self._stopping = trio.Event()
        self._window = RestartWindow(self.policy.max_restarts, self.policy.within_seconds)
        self._children_scope: trio.CancelScope | None = None
        self._escalation: EscalationError | None = None
        self._group_failure: tuple[Actor, Exception | None] | None = None
        self._done: set[str] = set()

    @property
    def children(self) -> tuple[Actor, ...]:
        """The supervised actors, in start order."""
        return self._children

    def tree(self) -> list[tuple[str, ActorStatistics]]:
        """Statistics of this supervisor and every descendant, depth-first, keyed by path
        (``"root/commit/coordinator"``)."""
        rows = [(self.name, self.statistics())]
        for child in self._children:
            if isinstance(child, Supervisor):
                rows.extend((f"{self.name}/{path}", stats) for path, stats in child.tree())
            else:
                rows.append((f"{self.name}/{child.name}", child.statistics()))
        return rows

    def request_stop(self) -> None:
        """Set ``stop_requested`` on this supervisor and every descendant. Never blocks."""
        self.stop_requested.set()
        for child in self._children:
            child.request_stop()

    async def stop(self) -> None:
        """Stop gracefully and wait until :meth:`run` has returned.

        Every descendant is asked to stop; children get ``policy.shutdown_grace`` seconds to
        return and are cancelled after that. Returns at once if the supervisor is not running.
        Do not await this from inside the tree it stops (use :meth:`request_stop` there).
        """
        self.request_stop()
        if self._finished is not None:
            await self._finished.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the children in order, report started, then supervise until stopped.

        Raises :class:`EscalationError` if the restart intensity is exceeded.
        """
        if self._finished is not None and not self._finished.is_set():
            raise RuntimeError(f"supervisor {self.name!r} is already running")
        self._finished = finished = trio.Event()
        self._reset_run_state()
        self._set_state(ActorState.STARTING)
        reported = False

        def report_started() -> None:
            nonlocal reported
            if not reported:
                reported = True
                self._set_state(ActorState.RUNNING)
                task_status.started()

        final_state = ActorState.STOPPED
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_stop)
                await self._supervise(report_started)
                nursery.cancel_scope.cancel()
            if self._escalation is not None:
                raise self._escalation
            if not reported:
                # Stopped before every child was up: report started so a caller using
                # nursery.start() sees a supervisor that started and then stopped.
                reported = True
                task_status.started()
        except Exception:
            final_state = ActorState.FAILED
            raise
        finally:
            self._set_state(final_state)
            finished.set()

    # -- stopping -----------------------------------------------------------------------------

    def _is_stopping(self) -> bool:
        return self._stopping.is_set() or self.stop_requested.is_set()

    async def _watch_stop(self) -> None:
        await self.stop_requested.wait()
        self._begin_stop()

    def _begin_stop(self) -> None:
        """Ask every child to stop and arm the hard-cancel deadline. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        for child in self._children:
            child.request_stop()
        if self._children_scope is not None:
            deadline = trio.current_time() + self.policy.shutdown_grace
            self._children_scope.deadline = min(self._children_scope.deadline, deadline)

    async def _backoff(self, delay: float) -> bool:
        """Sleep ``delay`` seconds unless a stop comes first; True if we should go on."""
        with trio.move_on_after(delay):
            await self._stopping.wait()
        return not self._is_stopping()

    # -- supervising --------------------------------------------------------------------------

    async def _supervise(self, report_started: Callable[[], None]) -> None:
        """Run generations of children until they are all done, a stop, or an escalation.

        Under one_for_one there is a single generation (each child restarts itself in its own
        slot). Under one_for_all a failure ends the generation and the loop starts the next one.
        """
        restart = False
        while not self._is_stopping():
            failure = await self._run_generation(report_started, restart=restart)
            if failure is None or self._escalation is not None or self._is_stopping():
                return
            failed, error = failure
            attempt = self._window.admit(trio.current_time(), _GROUP)
            if attempt is None:
                self._escalate(failed, error)
                return
            delay = self.policy.backoff_delay(attempt, self._rng)
            survivors = [c for c in self._children if c.name not in self._done]
            for child in survivors:
                child._set_state(ActorState.BACKING_OFF)
            _log.info(
                "restarting",
                supervisor=self.name,
                actor=failed.name,
                group=[c.name for c in survivors],
                delay=round(delay, 3),
                attempt=attempt,
            )
            if not await self._backoff(delay):
                for child in survivors:
                    child._set_state(ActorState.STOPPED)
                return
            restart = True

    async def _run_generation(
        self, report_started: Callable[[], None], *, restart: bool
    ) -> tuple[Actor, Exception | None] | None:
        """Start the children that are not done and wait for all of them to end.

        Returns the (child, error) that ended the generation under one_for_all, if any.
        """
        self._group_failure = None
        async with trio.open_nursery() as nursery:
            self._children_scope = nursery.cancel_scope
            for child in self._children:
                if self._generation_over():
                    break
                if child.name not in self._done:
                    await nursery.start(self._supervise_child, child, restart)
            if not self._generation_over():
                report_started()
        self._children_scope = None
        return self._group_failure

    def _generation_over(self) -> bool:
        return (
            self._is_stopping() or self._group_failure is not None or self._escalation is not None
        )

    async def _supervise_child(
        self, child: Actor, restart: bool, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """One child's slot: run it, and (under one_for_one) restart it until told otherwise.

        Reports started to the supervisor the first time the child does, or when the slot gives
        up, so the supervisor's in-order startup never waits on a child that will not come up.
        """
        reported = False

        def on_started() -> None:
            nonlocal reported
            child._set_state(ActorState.RUNNING)
            if not reported:
                reported = True
                task_status.started()

        try:
            if restart:
                child._record_restart()
            while True:
                child._rearm_stop()
                child._set_state(ActorState.STARTING)
                error: Exception | None = None
                try:
                    await child.run(task_status=StartedSignal(on_started))
                except Exception as exc:
                    error = exc
                if not await self._after_exit(child, error):
                    break
                child._record_restart()
        except BaseException:
            # Cancelled (or KeyboardInterrupt...): not a failure; the child is simply not running.
            if child._state in _LIVE_STATES:
                child._set_state(ActorState.STOPPED)
            raise
        if not reported:
            task_status.started()

    async def _after_exit(self, child: Actor, error: Exception | None) -> bool:
        """Decide what happens after ``child.run()`` ended; True means restart it now."""
        if error is not None:
            child._record_error(error)
            _log.warning(
                "actor crashed",
                supervisor=self.name,
                actor=child.name,
                error=describe_error(error),
                exc_info=error,
            )
            if self._is_stopping() or self._escalation is not None:
                child._set_state(ActorState.FAILED)
                return False
        elif (
            not self.policy.restart_on_normal_exit
            or child.stop_requested.is_set()
            or self._is_stopping()
            or self._escalation is not None
        ):
            child._set_state(ActorState.STOPPED)
            self._done.add(child.name)
            return False
        else:
            _log.info("actor exited", supervisor=self.name, actor=child.name)

        if self.policy.strategy == "one_for_all":
            child._set_state(ActorState.BACKING_OFF)
            if self._group_failure is None:
                self._group_failure = (child, error)
                if self._children_scope is not None:
                    self._children_scope.cancel()
            return False

        attempt = self._window.admit(trio.current_time(), child.name)
        if attempt is None:
            self._escalate(child, error)
            return False
        delay = self.policy.backoff_delay(attempt, self._rng)
        child._set_state(ActorState.BACKING_OFF)
        _log.info(
            "restarting",
            supervisor=self.name,
            actor=child.name,
            delay=round(delay, 3),
            attempt=attempt,
        )
        if not await self._backoff(delay):
            child._set_state(ActorState.STOPPED)
            return False
        return True

    def _escalate(self, child: Actor, error: Exception | None) -> None:
        last_error = describe_error(error) if error is not None else "exited normally"
        self._escalation = EscalationError(
            self.name,
            child=child.name,
            last_error=last_error,
            max_restarts=self.policy.max_restarts,
            within_seconds=self.policy.within_seconds,
            cause=error,
        )
        child._set_state(ActorState.FAILED)
        _log.warning(
            "escalated",
            supervisor=self.name,
            actor=child.name,
            max_restarts=self.policy.max_restarts,
            within_seconds=self.policy.within_seconds,
            error=last_error,
        )
        self._begin_stop()
