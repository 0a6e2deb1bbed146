"""Running a supervision tree as a program: start it, stop it gracefully, report an exit code.

Exists so the server's entry point needs one call and one integer. Guarantees: ``run_root``
returns 0 after a graceful stop and 1 after a failure reached the root, logging exactly one
error line for that failure; if the caller is cancelled (e.g. a SIGTERM handler cancels the
enclosing scope) the tree still gets the graceful sequence - every actor is asked to stop and
given the root's ``shutdown_grace`` - before the cancellation propagates.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
import trio

from duckmesh.supervisors._actor import StartedSignal
from duckmesh.supervisors._errors import EscalationError
from duckmesh.supervisors._statistics import describe_error
from duckmesh.supervisors._supervisor import Supervisor

_log = structlog.get_logger("duckmesh.supervisors")


async def run_root(root: Supervisor, *, on_started: Callable[[], None] | None = None) -> int:
    """Run ``root`` until it stops; return the process exit code.

    - ``0``: the tree stopped gracefully (``root.stop()``/``root.request_stop()``, or every
      child finished).
    - ``1``: an escalation (or an unexpected error) reached the root; one structlog error line,
      ``"supervision tree failed"`` with ``actor`` (path of the actor where the failure started)
      and ``error``, has been logged.

    ``on_started`` is called once every actor in the tree has started.

    If the caller is cancelled, the tree is stopped gracefully inside a shielded scope whose
    deadline is ``root.policy.shutdown_grace`` seconds away, and then ``trio.Cancelled``
    propagates (Trio code must not swallow it; the cancel scope that was cancelled absorbs it).
    Any other exception arriving at the caller (e.g. ``KeyboardInterrupt``) is handled the same
    way.
    """
    # The tree runs shielded so that cancelling our caller does not tear it down abruptly;
    # the waiter below turns that cancellation into a graceful stop with a hard deadline.
    tree_scope = trio.CancelScope(shield=True)
    started = trio.Event()  # set when the root reports started, or when it ends without doing so
    finished = trio.Event()
    signal = StartedSignal(started.set)
    failures: list[Exception] = []

    async def run_tree() -> None:
        try:
            with tree_scope:
                await root.run(task_status=signal)
        except Exception as exc:
            failures.append(exc)
            _log_failure(root, exc)
        finally:
            finished.set()
            started.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_tree)
        try:
            await started.wait()
            if signal.called and not finished.is_set() and on_started is not None:
                on_started()
            await finished.wait()
        except BaseException:
            root.request_stop()
            grace_deadline = trio.current_time() + root.policy.shutdown_grace
            tree_scope.deadline = min(tree_scope.deadline, grace_deadline)
            raise
    return 1 if failures else 0


def _log_failure(root: Supervisor, exc: Exception) -> None:
    if isinstance(exc, EscalationError):
        actor, error = exc.origin, exc.origin_error
    else:
        actor, error = root.name, describe_error(exc)
    _log.error("supervision tree failed", actor=actor, error=error)
