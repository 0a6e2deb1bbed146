"""DuckMesh: concurrent HTTP ingest, snapshot-published Parquet, SQL through DuckDB.

Layout (one subpackage per plane; each says what it owns in its docstring):

- ``events``       append-only event log in Postgres (the catalog's source of truth)
- ``projections``  catalog tables derived from the log, and replay
- ``catalog``      commands that validate input and append events; table schemas
- ``supervisors``  Trio actors, supervisors, restart policies, fault points
- ``bus``          the ``IngestBus`` protocol and its Postgres backend
- ``coordinator``  the commit actor: bus batches -> Parquet -> published snapshot
- ``query``        snapshot resolution, visibility barrier, sandboxed DuckDB
- ``maintenance``  compaction, retention, garbage collection, integrity
- ``storage``      the ``ObjectStore`` protocol and its local backend
- ``auth``         API keys and roles
- ``api``          the Quart-Trio HTTP application and its OpenAPI document
- ``cli``          the ``duckmesh`` command
"""

__version__ = "0.1.0"
