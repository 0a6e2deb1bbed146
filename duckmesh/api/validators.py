"""Compiled ingest validators per (tenant, table), and the table lookup they need.

Validators are dropped on every table event and, in case a notification is
lost, after ``VALIDATOR_CACHE_S`` at most. ``forget`` bumps a generation, and
a validator built from a read that started before the bump is not kept: a
schema change that lands while a request is loading the table cannot leave
the old schema cached.
"""

from __future__ import annotations

import time

from duckmesh.catalog import reads
from duckmesh.catalog.commands import stream_tenant
from duckmesh.catalog.model import TableDef
from duckmesh.db import Database
from duckmesh.errors import DuckMeshError
from duckmesh.ingest.validation import TableValidator

VALIDATOR_CACHE_S = 10.0
_MAX_ENTRIES = 10_000


async def load_table(db: Database, tenant: str, name: str) -> TableDef:
    """The tenant's live table ``name``, or ``TABLE_NOT_FOUND``."""
    table = await db.run(lambda c: reads.get_table(c, tenant, name), transaction=False)
    if table is None:
        raise DuckMeshError("TABLE_NOT_FOUND", f"no table {name!r}", table=name)
    return table


class TableValidators:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: dict[tuple[str, str], tuple[TableValidator, float]] = {}
        self._generation = 0

    def on_event(self, stream: str) -> None:
        """Notification hook: any table event may change a schema."""
        if stream_tenant(stream, "tables") is not None:
            self.forget()

    def forget(self, key: tuple[str, str] | None = None) -> None:
        self._generation += 1
        if key is None:
            self._cache.clear()
        else:
            self._cache.pop(key, None)

    async def get(self, tenant: str, name: str) -> TableValidator:
        cached = self._cache.get((tenant, name))
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        generation = self._generation
        tv = TableValidator.for_table(await load_table(self._db, tenant, name))
        if generation == self._generation:
            if len(self._cache) > _MAX_ENTRIES:
                self._cache.clear()
            self._cache[(tenant, name)] = (tv, time.monotonic() + VALIDATOR_CACHE_S)
        return tv
