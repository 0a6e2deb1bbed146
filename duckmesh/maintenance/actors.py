"""Maintenance actors of the ``maintenance`` role (none are scheduled yet).

Compaction, retention, GC and integrity checking are tracked in their own
issue; the role and its supervisor exist so the tree and the
``--role maintenance`` process are already in place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from duckmesh.supervisors import Actor

if TYPE_CHECKING:
    from duckmesh.runtime import Runtime


def maintenance_actors(rt: Runtime) -> list[Actor]:
    return []
