"""The catalog's application layer: commands that append events, read models.

Commands (``commands``) validate input and append events through
``duckmesh.events``; reads (``reads``) query the projection tables. Column
types live in ``types``. May import events, projections, auth and errors.
"""
