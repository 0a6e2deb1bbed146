"""The one exception supervision raises on purpose: a supervisor giving up.

Exists so a parent (or ``run_root``) can tell "my child supervisor exhausted its restart
intensity" from an ordinary crash, and report where the failure started. Guarantees: the
exception names the supervisor that gave up and the child that tipped it over, keeps the last
error as text and as ``__cause__``, and can walk nested escalations back to the first failure.
"""

from __future__ import annotations


class EscalationError(Exception):
    """A supervisor exceeded its restart intensity and stopped.

    ``actor`` is the supervisor that gave up, ``child`` the child whose failure exceeded the
    limit, ``last_error`` that child's last error as ``"ExcType: message"``.
    """

    def __init__(
        self,
        actor: str,
        *,
        child: str,
        last_error: str,
        max_restarts: int,
        within_seconds: float,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(
            f"supervisor {actor!r} gave up: more than {max_restarts} restarts within "
            f"{within_seconds:g}s; last failure in {child!r}: {last_error}"
        )
        self.actor = actor
        self.child = child
        self.last_error = last_error
        self.max_restarts = max_restarts
        self.within_seconds = within_seconds
        self.__cause__ = cause

    @property
    def origin(self) -> str:
        """Slash-separated path to the actor whose failure started the escalation chain,
        e.g. ``"root/commit/coordinator-1"``."""
        parts = [self.actor]
        error: EscalationError = self
        while True:
            parts.append(error.child)
            cause = error.__cause__
            if not (isinstance(cause, EscalationError) and cause.actor == error.child):
                return "/".join(parts)
            error = cause

    @property
    def origin_error(self) -> str:
        """``"ExcType: message"`` of the failure at :attr:`origin`."""
        error: EscalationError = self
        while isinstance(error.__cause__, EscalationError) and error.__cause__.actor == error.child:
            error = error.__cause__
        return error.last_error
