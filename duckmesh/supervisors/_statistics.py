"""What an actor reports about itself: its lifecycle state and a frozen statistics snapshot.

Exists so that health endpoints, ``tree()`` and tests read one immutable, JSON-ready record per
actor instead of poking at live objects. Guarantees: a snapshot never changes after it is taken,
and ``as_dict()`` holds only JSON types (``str``, ``int``, ``float``, ``None``).
"""

from __future__ import annotations

import enum

import attrs


class ActorState(enum.Enum):
    """Where an actor is in its lifecycle.

    ``STARTING`` -> ``RUNNING`` -> (``BACKING_OFF`` -> ``STARTING`` -> ``RUNNING``)* -> ``STOPPED``
    or ``FAILED``. An actor that has never run reports ``STOPPED``.
    """

    STARTING = "starting"
    RUNNING = "running"
    BACKING_OFF = "backing_off"
    STOPPED = "stopped"
    FAILED = "failed"


@attrs.frozen
class ActorStatistics:
    """A point-in-time snapshot of one actor."""

    name: str
    state: ActorState
    restarts: int
    last_error: str | None
    """``"ExcType: message"`` of the most recent crash, or ``None`` if it never crashed."""
    last_error_at: float | None
    """Wall-clock time (``time.time()``) of that crash."""

    def as_dict(self) -> dict[str, object]:
        """The snapshot as a JSON-ready mapping (the state as its lowercase string value)."""
        return {
            "name": self.name,
            "state": self.state.value,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }


def describe_error(exc: BaseException) -> str:
    """Render an exception as ``"ExcType: message"`` (just ``"ExcType"`` if it has no message).

    A Trio nursery wraps even a single error in an exception group; such a group is described
    by the one error inside it, which is what a reader of the statistics wants to see.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
