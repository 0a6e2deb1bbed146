"""Supervision for DuckMesh's background actors, built on Trio structured concurrency.

Exists so ingest, commit, compaction and the other long-running jobs share one way to start,
restart, report on and stop themselves. Guarantees: failures are restarted per a
:class:`RestartPolicy` and escalate to the parent when they keep happening; cancellation is never
mistaken for failure; a graceful stop gives every actor its grace period before cancelling it.
See ``docs/SUPERVISION.md``.
"""

from duckmesh.supervisors._actor import Actor, FunctionActor
from duckmesh.supervisors._errors import EscalationError
from duckmesh.supervisors._policy import RestartPolicy
from duckmesh.supervisors._root import run_root
from duckmesh.supervisors._statistics import ActorState, ActorStatistics
from duckmesh.supervisors._supervisor import Supervisor
from duckmesh.supervisors.faults import (
    FAULT_ACTIONS,
    KNOWN_FAULT_POINTS,
    FaultInjected,
    FaultPoints,
)

__all__ = [
    "FAULT_ACTIONS",
    "KNOWN_FAULT_POINTS",
    "Actor",
    "ActorState",
    "ActorStatistics",
    "EscalationError",
    "FaultInjected",
    "FaultPoints",
    "FunctionActor",
    "RestartPolicy",
    "Supervisor",
    "run_root",
]
