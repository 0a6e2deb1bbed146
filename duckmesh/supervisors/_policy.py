"""How a supervisor reacts to failures: the restart strategy, backoff and restart intensity.

Exists to keep the arithmetic of supervision (exponential backoff with jitter, the sliding
restart window) separate from the Trio plumbing, so it can be read and tested on its own.
Guarantees: a policy is immutable and validated at construction; ``RestartWindow`` admits at most
``max_restarts`` restarts in any ``within_seconds`` interval.
"""

from __future__ import annotations

import collections
import random
from typing import Any, Literal

import attrs

# Jitter only spreads restarts apart; it protects nothing secret.
_JITTER = random.Random()  # noqa: S311

Strategy = Literal["one_for_one", "one_for_all"]
STRATEGIES: tuple[Strategy, ...] = ("one_for_one", "one_for_all")


def _non_negative(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


def _strategy(_instance: object, _attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {value!r}")


def _fraction(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"{attribute.name} must be in [0, 1), got {value}")


@attrs.frozen
class RestartPolicy:
    """What a supervisor does when one of its children fails.

    ``one_for_one`` restarts only the failed child; ``one_for_all`` cancels its siblings and
    restarts the whole group in order. Either way the restart waits an exponential backoff
    (``backoff_initial * 2**(n-1)`` for the n-th recent restart, capped at ``backoff_max``, then
    scaled by a random factor in ``1 +/- backoff_jitter``). Performing more than ``max_restarts``
    restarts within ``within_seconds`` makes the supervisor give up and escalate to its parent.
    """

    strategy: Strategy = attrs.field(default="one_for_one", validator=_strategy)
    max_restarts: int = attrs.field(default=5, validator=_non_negative)
    within_seconds: float = attrs.field(default=60.0, validator=_positive)
    backoff_initial: float = attrs.field(default=0.1, validator=_non_negative)
    backoff_max: float = attrs.field(default=10.0, validator=_non_negative)
    backoff_jitter: float = attrs.field(default=0.2, validator=_fraction)
    shutdown_grace: float = attrs.field(default=5.0, validator=_non_negative)
    restart_on_normal_exit: bool = False

    def __attrs_post_init__(self) -> None:
        if self.backoff_max < self.backoff_initial:
            raise ValueError(
                f"backoff_max ({self.backoff_max}) must be >= backoff_initial "
                f"({self.backoff_initial})"
            )

    def backoff_delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the ``attempt``-th recent restart (``attempt >= 1``)."""
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        # Cap the exponent first so a long run of restarts cannot overflow the float.
        base = min(self.backoff_initial * 2.0 ** min(attempt - 1, 64), self.backoff_max)
        if self.backoff_jitter == 0:
            return base
        # Jitter spreads restarts of many actors apart; it is not used for anything secret.
        spread = (rng or _JITTER).uniform(-self.backoff_jitter, self.backoff_jitter)
        return base * (1.0 + spread)


class RestartWindow:
    """The sliding window that enforces restart intensity.

    Each admitted restart is remembered with a key (the child's name, or one shared key for a
    group restart) so the backoff can grow per key while the limit applies to the supervisor.
    """

    def __init__(self, max_restarts: int, within_seconds: float) -> None:
        self._max = max_restarts
        self._within = within_seconds
        self._entries: collections.deque[tuple[float, str]] = collections.deque()

    def __len__(self) -> int:
        return len(self._entries)

    def admit(self, now: float, key: str) -> int | None:
        """Record a restart at ``now``; return how many recent restarts ``key`` has had,
        including this one, or ``None`` if it would exceed the intensity (nothing recorded)."""
        while self._entries and self._entries[0][0] <= now - self._within:
            self._entries.popleft()
        if len(self._entries) >= self._max:
            return None
        self._entries.append((now, key))
        return sum(1 for _, k in self._entries if k == key)
