"""S3-compatible object store (AWS S3, MinIO, R2, GCS's S3 API) via pyarrow.

Objects live under ``s3://bucket/prefix/<key>``; pyarrow's S3 filesystem
does the protocol (multipart uploads for large files, the AWS SDK's standard
retry with backoff on throttling, 5xx and network errors, credentials from
the standard ``AWS_*`` variables and profiles), so DuckDB never needs httpfs:
it reads the local copies in the ``FileCache``.

- ``put_file`` uploads and returns only once the upload is complete (the
  object is durable before any snapshot can list it), records the file's
  SHA-256 as a ``sha256`` parameter of its Content-Type (pyarrow writes no
  user metadata; a HEAD reads it back; ``checksum`` hashes the remote
  bytes of an object without it), then moves the source into the
  cache: fresh files are warm on the node that wrote them.
- ``local_path``/``local_paths`` download missing objects into the cache.
- ``delete`` also drops the cached copy.
- A store that does not answer raises ``ObjectStoreUnavailable``
  (``OBJECT_STORE_UNAVAILABLE``, retryable).
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import hashlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog
from pyarrow import fs as pafs

from duckmesh import metrics
from duckmesh.files import FILE_MODE, private_dir
from duckmesh.storage.cache import FileCache
from duckmesh.storage.layout import sha256_file
from duckmesh.storage.protocol import ObjectInfo, ObjectStoreUnavailable, check_key

log = structlog.get_logger("duckmesh.s3")

CHUNK = 8 << 20
CONTENT_TYPE = "application/octet-stream"
DOWNLOAD_THREADS = 8


def _checksum_of(content_type: str) -> str | None:
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name == "sha256" and len(value) == 64:
            return value
    return None


class S3ObjectStore:
    def __init__(
        self,
        filesystem: pafs.FileSystem,
        bucket: str,
        prefix: str,
        cache: FileCache,
        probe: pafs.FileSystem | None = None,
    ) -> None:
        self.fs = filesystem
        self.probe = probe or filesystem  # readiness: one quick attempt, no retries
        self.bucket = bucket
        self.base = "/".join(p for p in (bucket, prefix.strip("/")) if p)
        self.cache = cache

    def _remote(self, key: str) -> str:
        return f"{self.base}/{'/'.join(check_key(key))}"

    @contextlib.contextmanager
    def _call(self, op: str) -> Iterator[None]:
        try:
            yield
        except (FileNotFoundError, FileExistsError, ValueError):
            metrics.OBJECT_STORE_REQUESTS.labels(op=op, status="ok").inc()
            raise
        except OSError as exc:
            metrics.OBJECT_STORE_REQUESTS.labels(op=op, status="unavailable").inc()
            log.warning("object store unavailable", op=op, error=str(exc)[:300])
            raise ObjectStoreUnavailable(op, str(exc)) from exc
        metrics.OBJECT_STORE_REQUESTS.labels(op=op, status="ok").inc()

    # -- writes ----------------------------------------------------------------

    def put_file(self, source: Path, key: str, checksum: str | None = None) -> ObjectInfo:
        remote = self._remote(key)
        if self.stat(key) is not None:
            raise FileExistsError(f"object key already used: {key!r}")
        digest = checksum or sha256_file(source)
        size = source.stat().st_size
        meta = {"Content-Type": f"{CONTENT_TYPE}; sha256={digest}"}
        with (
            self._call("put"),
            open(source, "rb") as src,
            self.fs.open_output_stream(remote, metadata=meta) as out,
        ):
            for chunk in iter(lambda: src.read(CHUNK), b""):
                out.write(chunk)
        # close() completed the (multipart) upload: the object is durable.
        metrics.OBJECT_STORE_BYTES.labels(direction="put").inc(size)
        os.chmod(source, FILE_MODE)
        self.cache.admit(key, source)
        return ObjectInfo(key, size, dt.datetime.now(dt.UTC))

    def delete(self, key: str) -> bool:
        self.cache.drop(key)
        if self.stat(key) is None:
            return False
        with self._call("delete"):
            self.fs.delete_file(self._remote(key))
        return True

    # -- reads -----------------------------------------------------------------

    def stat(self, key: str) -> ObjectInfo | None:
        with self._call("head"):
            info = self.fs.get_file_info(self._remote(key))
        if info.type != pafs.FileType.File:
            return None
        return ObjectInfo(key, int(info.size or 0), _utc(info.mtime))

    def checksum(self, key: str) -> str | None:
        """The SHA-256 recorded at write, from a HEAD (no download); for an
        object written without it, the remote bytes hashed as they stream
        (never the cached copy). None when the object is missing."""
        try:
            with self._call("head"), self.fs.open_input_file(self._remote(key)) as fh:
                meta = fh.metadata()
                raw = meta.get("Content-Type", b"")
                recorded = _checksum_of(raw.decode() if isinstance(raw, bytes) else str(raw))
                if recorded is not None:
                    return recorded
                digest = hashlib.sha256()
                while chunk := fh.read(CHUNK):
                    digest.update(chunk)
                return digest.hexdigest()
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._remote(prefix) if prefix else self.base
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        with self._call("list"):
            infos = self.fs.get_file_info(selector)
        for info in infos:
            if info.type == pafs.FileType.File:
                key = info.path[len(self.base) + 1 :]
                yield ObjectInfo(key, int(info.size or 0), _utc(info.mtime))

    def _download(self, key: str, target: Path) -> None:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with self._call("get"), os.fdopen(fd, "wb") as out:
            with self.fs.open_input_stream(self._remote(key)) as src:
                while chunk := src.read(CHUNK):
                    out.write(chunk)
            size = out.tell()
        metrics.OBJECT_STORE_BYTES.labels(direction="get").inc(size)

    def local_path(self, key: str) -> Path:
        check_key(key)
        return self.cache.get(key, lambda target: self._download(key, target))

    def local_paths(self, keys: Sequence[str]) -> builtins.list[Path]:
        """Every key's cached file, the missing ones downloaded in parallel;
        none of them is evicted while the others download."""
        with self.cache.hold(keys):
            missing = [k for k in keys if not self.cache.contains(k)]
            if len(missing) > 1:
                with ThreadPoolExecutor(min(DOWNLOAD_THREADS, len(missing))) as pool:
                    list(pool.map(self.local_path, missing))
            return [self.local_path(k) for k in keys]

    def directory(self, prefix: str) -> Path:
        return private_dir(self.cache.root.joinpath(*check_key(prefix)))

    # -- local scratch ---------------------------------------------------------

    def scratch_dir(self) -> Path:
        return self.cache.scratch

    def scratch_path(self, suffix: str = "") -> Path:
        return self.cache.scratch_path(suffix)

    def check_writable(self) -> None:
        """The bucket answers and the local scratch directory is writable."""
        probe = self.scratch_path(".probe")
        probe.write_bytes(b"ok")
        probe.unlink()
        with self._call("head"):
            info = self.probe.get_file_info(self.bucket)
        if info.type == pafs.FileType.NotFound:
            raise ObjectStoreUnavailable("head", f"bucket {self.bucket!r} not found")


def _utc(when: dt.datetime | None) -> dt.datetime:
    if when is None:
        return dt.datetime.now(dt.UTC)
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
