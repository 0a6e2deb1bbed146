"""Catalog projections: tables derived from the event log, and replay.

Owns the projection tables listed in ``PROJECTION_TABLES``; nothing else
writes them. Applied by ``duckmesh.catalog.journal.append`` in the append
transaction (the event store itself knows nothing of them).
"""

from duckmesh.projections.catalog import PROJECTION_TABLES, apply

__all__ = ["PROJECTION_TABLES", "apply"]
