"""Object storage for Parquet data files: the protocol and its backends.

``local`` is the default backend; an S3-compatible one will implement the
same ``ObjectStore`` protocol and pass the same contract tests.
"""

from duckmesh.storage.local import LocalObjectStore
from duckmesh.storage.protocol import ObjectInfo, ObjectStore

__all__ = ["LocalObjectStore", "ObjectInfo", "ObjectStore"]
