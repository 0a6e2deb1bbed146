"""The one place that chooses an object-store backend from the configuration.

``DUCKMESH_OBJECT_STORE_URL`` empty: ``objects/`` under the data directory;
``file:///path``: that local directory; ``s3://bucket/prefix``: the S3
backend with its local file cache (``DUCKMESH_OBJECT_CACHE_DIR``, default
``cache/`` under the data directory, bounded by
``DUCKMESH_OBJECT_CACHE_BYTES``). See ADR 0019.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pyarrow import fs as pafs

from duckmesh.config import Config
from duckmesh.storage.cache import FileCache, default_cache_bytes
from duckmesh.storage.local import LocalObjectStore
from duckmesh.storage.protocol import ObjectStore
from duckmesh.storage.s3 import S3ObjectStore

# The AWS SDK's standard retry mode: exponential backoff with jitter on
# throttling, 5xx and network errors; then OBJECT_STORE_UNAVAILABLE.
S3_MAX_ATTEMPTS = 5
S3_CONNECT_TIMEOUT_S = 2.0
S3_REQUEST_TIMEOUT_S = 30.0
# Readiness probes answer within a second or two: one attempt, short timeouts.
PROBE_TIMEOUT_S = 1.0


def s3_filesystem(config: Config, *, probe: bool = False) -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem for the configured endpoint; credentials come
    from the AWS SDK's default chain (``AWS_*`` variables, profiles, roles)."""
    attempts = 1 if probe else S3_MAX_ATTEMPTS
    options: dict[str, object] = {
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
        "connect_timeout": PROBE_TIMEOUT_S if probe else S3_CONNECT_TIMEOUT_S,
        "request_timeout": PROBE_TIMEOUT_S if probe else S3_REQUEST_TIMEOUT_S,
        "force_virtual_addressing": not config.s3_path_style,
    }
    if config.s3_region:
        options["region"] = config.s3_region
    if config.s3_endpoint_url:
        endpoint = urlsplit(config.s3_endpoint_url)
        options["endpoint_override"] = endpoint.netloc + endpoint.path
        options["scheme"] = endpoint.scheme
    return pafs.S3FileSystem(**options)


def object_cache(config: Config) -> FileCache:
    root = Path(config.object_cache_dir) if config.object_cache_dir else config.data_dir / "cache"
    size = config.object_cache_bytes or default_cache_bytes(root)
    return FileCache(root, size)


def open_object_store(config: Config) -> ObjectStore:
    url = config.object_store_url
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://") :].partition("/")
        return S3ObjectStore(
            s3_filesystem(config),
            bucket,
            prefix,
            object_cache(config),
            probe=s3_filesystem(config, probe=True),
        )
    if url.startswith("file://"):
        return LocalObjectStore(Path(urlsplit(url).path))
    return LocalObjectStore(config.data_dir / "objects")
