"""The commit plane: bus batches -> Parquet files -> one published snapshot.

``committer`` holds the synchronous commit cycle; ``actor`` runs it under
supervision, woken by LISTEN/NOTIFY with polling as the fallback. May import
bus (protocol), catalog, events, storage, supervisors, metrics.
"""
