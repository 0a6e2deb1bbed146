"""The property-based scenario runner's engine (issue 8).

``actions`` defines scenario steps as plain JSON-able dicts; ``executor`` runs
them against a real DuckMesh (:class:`System`: Postgres, an API process and a
coordinator process), keeps a model of every acknowledged write and checks
the consistency guarantees after every step, raising
:class:`InvariantViolation`; ``load`` adds background writers checked by the
same executor. ``scenarios/runner.py`` generates the steps with
hypothesis; ``duckmesh scenario replay FILE`` reruns a recorded failure.
"""

from duckmesh_testing.scenario.executor import (
    Executor,
    InvariantViolation,
    Stats,
    load_recording,
    replay,
)
from duckmesh_testing.scenario.system import HarnessError, System

__all__ = [
    "Executor",
    "HarnessError",
    "InvariantViolation",
    "Stats",
    "System",
    "load_recording",
    "replay",
]
