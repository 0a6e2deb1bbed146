"""TEST ONLY: guarantees broken on purpose, the negative controls of the scenario runner.

``DUCKMESH_UNSAFE_BREAK=<name>`` (refused unless ``DUCKMESH_ENABLE_FAULTS=1``,
see ``duckmesh/config.py``) arms one of :data:`duckmesh.config.UNSAFE_BREAKS`
for the whole process (``build_runtime`` calls :func:`arm`). Each break is a
one-line guarded branch at the place its guarantee is kept, so the runner can
show it notices when that guarantee is gone (docs/CONSISTENCY.md, "Broken
twins"). Nothing is armed unless that configuration says so.
"""

from __future__ import annotations

_armed = ""


def arm(name: str) -> None:
    """Arm ``name`` (already validated by the configuration), or nothing with ""."""
    global _armed
    _armed = name


def broken(name: str) -> bool:
    """True only in a test process that armed exactly this break."""
    return _armed == name
