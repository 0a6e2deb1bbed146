"""The catalog's application layer: commands that append events, read models.

Commands (``commands``) validate input and append events through
``journal`` (the event store plus projections, one transaction); every
snapshot is published by ``snapshots`` (ADR 0010); reads (``reads``) query
the projection tables. Column types live in ``types``. May import events,
projections, storage.layout, auth and errors.
"""
