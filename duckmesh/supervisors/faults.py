"""Named fault points: places in the code where tests and the scenario runner can inject failures.

Exists so crash-recovery can be exercised deterministically ("die right after the Parquet file is
written, before the snapshot is published") instead of by luck. Call sites are synchronous and
may run in worker threads: ``faults.hit("coordinator.after_parquet_write")``.

Guarantees: a disabled ``FaultPoints`` never fires and costs one attribute check per hit; only
names in :data:`KNOWN_FAULT_POINTS` can be armed; an armed point fires exactly ``count`` times and
then disarms itself; all state is guarded by a lock.
"""

from __future__ import annotations

import collections
import errno
import os
import signal
import threading
import time

import attrs

FAULT_ACTIONS = ("raise", "kill", "delay", "enospc")

# The points one commit of records passes, in order; all but the last are
# before the snapshot is durable. Crash tests and the scenario runner kill the
# coordinator at these (they import this tuple; it is the only list).
COMMIT_FAULT_POINTS: tuple[str, ...] = (
    "coordinator.after_parquet_write",
    "coordinator.before_publish_commit",
    "coordinator.inside_publish_commit",
    "coordinator.after_publish_commit",
)

KNOWN_FAULT_POINTS: tuple[str, ...] = (
    "coordinator.before_claim",
    "coordinator.poison_record",
    *COMMIT_FAULT_POINTS,
    "coordinator.store_put",
    "compaction.after_write",
    "compaction.before_publish",
    "backfill.after_file_write",
    "backfill.before_publish",
    "api.ingest.after_append",
)

# ``coordinator.poison_record`` is hit once per record whose payload text contains
# this marker, while the coordinator builds the record's table (at commit and
# when bisecting a failed commit): armed, it makes exactly those records fail
# to build, as a record no validation foresaw would. Test-only, like every point.
POISON_MARKER = "dm-fault-poison"


class FaultInjected(Exception):
    """Raised by an armed ``"raise"`` fault point."""

    def __init__(self, point: str) -> None:
        super().__init__(f"fault injected at {point}")
        self.point = point


@attrs.define
class _Armed:
    action: str
    remaining: int
    delay_s: float


class FaultPoints:
    """A registry of armed fault points.

    ``enabled=False`` (production) makes :meth:`hit` a no-op and :meth:`arm` refuse, so a stray
    spec cannot inject faults into a real deployment.
    """

    def __init__(self, enabled: bool = False) -> None:
        self._enabled = enabled
        self._lock = threading.Lock()
        self._armed: dict[str, _Armed] = {}
        self._hits: collections.Counter[str] = collections.Counter()
        self._fired: collections.Counter[str] = collections.Counter()

    @property
    def enabled(self) -> bool:
        return self._enabled

    def arm(
        self, name: str, action: str = "raise", *, count: int = 1, delay_s: float = 0.0
    ) -> None:
        """Make the next ``count`` hits of ``name`` perform ``action``.

        Raises ``ValueError`` if fault injection is disabled, the name is unknown, the action is
        not one of :data:`FAULT_ACTIONS`, ``count < 1`` or ``delay_s < 0``.
        """
        if not self._enabled:
            raise ValueError(
                f"cannot arm fault point {name!r}: fault injection is disabled "
                "(set DUCKMESH_ENABLE_FAULTS=1)"
            )
        _check_name(name)
        if action not in FAULT_ACTIONS:
            raise ValueError(
                f"unknown fault action {action!r} for {name!r}; expected one of {FAULT_ACTIONS}"
            )
        if count < 1:
            raise ValueError(f"fault count for {name!r} must be >= 1, got {count}")
        if delay_s < 0:
            raise ValueError(f"fault delay for {name!r} must be >= 0, got {delay_s}")
        with self._lock:
            self._armed[name] = _Armed(action=action, remaining=count, delay_s=delay_s)

    def disarm(self, name: str) -> None:
        """Forget any armed action for ``name`` (no error if none)."""
        with self._lock:
            self._armed.pop(name, None)

    def armed(self) -> dict[str, int]:
        """Armed points and how many more times each will fire."""
        with self._lock:
            return {name: armed.remaining for name, armed in self._armed.items()}

    def hit(self, name: str) -> None:
        """Pass fault point ``name``; if it is armed, perform its action.

        ``"raise"`` raises :class:`FaultInjected`, ``"kill"`` sends SIGKILL to this process,
        ``"delay"`` blocks the calling thread for ``delay_s`` seconds (call sites run in worker
        threads, so this does not stall the event loop); ``"enospc"`` raises
        ``OSError(ENOSPC)``, as a full disk or object store would.
        """
        if not self._enabled:
            return
        with self._lock:
            self._hits[name] += 1
            armed = self._armed.get(name)
            if armed is None:
                return
            armed.remaining -= 1
            if armed.remaining <= 0:
                del self._armed[name]
            self._fired[name] += 1
            action, delay_s = armed.action, armed.delay_s
        # Act outside the lock so a delay does not block other threads' fault points.
        if action == "raise":
            raise FaultInjected(name)
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "delay":
            time.sleep(delay_s)
        elif action == "enospc":
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (fault injected at {name})")

    def hits(self, name: str) -> int:
        """How many times ``name`` was passed while enabled (armed or not)."""
        with self._lock:
            return self._hits[name]

    def fired(self, name: str) -> int:
        """How many times an armed action at ``name`` was performed."""
        with self._lock:
            return self._fired[name]

    @classmethod
    def from_spec(cls, spec: str, *, enabled: bool) -> FaultPoints:
        """Build from ``"name=action[:count][,name2=action2[:count]...]"``.

        ``delay`` takes the seconds as a third field: ``"compaction.after_write=delay:2:0.5"``
        (twice, half a second each). An empty spec arms nothing. Raises ``ValueError`` naming
        the offending entry if the spec is malformed, and (like :meth:`arm`) if it arms anything
        while ``enabled`` is false.
        """
        points = cls(enabled=enabled)
        for name, action, count, delay_s in _parse_spec(spec):
            points.arm(name, action, count=count, delay_s=delay_s)
        return points


def _check_name(name: str) -> None:
    if name not in KNOWN_FAULT_POINTS:
        raise ValueError(
            f"unknown fault point {name!r}; known points: {', '.join(KNOWN_FAULT_POINTS)}"
        )


def _parse_spec(spec: str) -> list[tuple[str, str, int, float]]:
    entries: list[tuple[str, str, int, float]] = []
    seen: set[str] = set()
    for raw in spec.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, rest = (part.strip() for part in entry.partition("="))
        if not sep or not name or not rest:
            raise ValueError(f"bad fault spec entry {entry!r}: expected 'name=action[:count]'")
        _check_name(name)
        if name in seen:
            raise ValueError(f"fault point {name!r} appears twice in the fault spec")
        seen.add(name)
        fields = [f.strip() for f in rest.split(":")]
        action = fields[0]
        if action not in FAULT_ACTIONS:
            raise ValueError(
                f"bad fault spec entry {entry!r}: action must be one of {FAULT_ACTIONS}"
            )
        max_fields = 3 if action == "delay" else 2
        if len(fields) > max_fields:
            raise ValueError(f"bad fault spec entry {entry!r}: too many ':' fields")
        count = _parse_count(entry, fields[1]) if len(fields) > 1 else 1
        delay_s = _parse_delay(entry, fields[2]) if len(fields) > 2 else 0.0
        if count < 1 or delay_s < 0:
            raise ValueError(f"bad fault spec entry {entry!r}: count must be >= 1, delay >= 0")
        entries.append((name, action, count, delay_s))
    return entries


def _parse_count(entry: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"bad fault spec entry {entry!r}: count {text!r} is not an integer"
        ) from None


def _parse_delay(entry: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"bad fault spec entry {entry!r}: delay {text!r} is not a number"
        ) from None
