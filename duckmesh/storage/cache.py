"""The local immutable-file cache of a remote object store.

Data files never change once written (a key is never reused), so a cached
copy never goes stale: the cache only has to bound its size. It keeps
whole objects under ``root/<key>`` (DuckDB reads them there, exactly as it
reads the local backend's files), evicts the least recently used first to
stay within ``max_bytes``, and downloads each missing object once however
many readers ask for it at the same time (the others wait for that one
download). Downloads and uploads go through ``root/_scratch`` and are
renamed into place, so a reader never sees a partial file.

Entries held by a running batch (``hold``: the files of one snapshot being
resolved) are not evicted while held; if the held entries alone exceed the
bound, the cache goes over it until they are released and says so in the
log (size the cache above the largest snapshot a query loads).

Thread-safe. The byte-bounded index is an ``OrderedDict`` rather than
``duckmesh.lru.LRU``, which bounds entry counts, not bytes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import attrs
import structlog

from duckmesh import metrics
from duckmesh.files import private_dir

log = structlog.get_logger("duckmesh.cache")

SCRATCH = "_scratch"
# Scratch files older than this at start are leftovers of a crashed process
# (other processes sharing the directory may be writing younger ones).
STALE_SCRATCH_S = 3600.0
# Without DUCKMESH_OBJECT_CACHE_BYTES: this fraction of the cache disk's size.
DEFAULT_DISK_FRACTION = 0.25


def default_cache_bytes(root: Path) -> int:
    usage = shutil.disk_usage(private_dir(root))
    return max(64 << 20, int(usage.total * DEFAULT_DISK_FRACTION))


@attrs.frozen
class CacheStatistics:
    entries: int
    bytes: int
    max_bytes: int


class FileCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = private_dir(root.resolve())
        self.scratch = private_dir(self.root / SCRATCH)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, int] = OrderedDict()  # key -> size, LRU first
        self._bytes = 0
        self._loading: dict[str, threading.Event] = {}
        self._held: dict[str, int] = {}
        self._adopt_existing()

    def _adopt_existing(self) -> None:
        """Index what a previous run left (oldest first); drop stale scratch."""
        found: list[tuple[float, str, int]] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d != SCRATCH]
            for name in filenames:
                path = Path(dirpath) / name
                st = path.stat()
                found.append((st.st_mtime, str(path.relative_to(self.root)), st.st_size))
        for _, key, size in sorted(found):
            self._entries[key] = size
            self._bytes += size
        now = time.time()
        for leftover in self.scratch.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if now - leftover.stat().st_mtime > STALE_SCRATCH_S:
                    leftover.unlink()
        with self._lock:
            self._evict(0)

    def path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def scratch_path(self, suffix: str = "") -> Path:
        return self.scratch / f"{uuid.uuid4().hex}{suffix}"

    def statistics(self) -> CacheStatistics:
        with self._lock:
            return CacheStatistics(len(self._entries), self._bytes, self.max_bytes)

    def contains(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def get(self, key: str, fetch: Callable[[Path], None]) -> Path:
        """The cached file of ``key``; ``fetch(scratch)`` downloads it when
        missing (once, however many threads ask at the same time)."""
        while True:
            with self._lock:
                if key in self._entries and self.path(key).exists():
                    self._entries.move_to_end(key)
                    metrics.OBJECT_CACHE_HITS.inc()
                    return self.path(key)
                if key in self._entries:  # removed behind our back: fetch again
                    self._bytes -= self._entries.pop(key)
                waiting = self._loading.get(key)
                if waiting is None:
                    done = self._loading[key] = threading.Event()
                    break
            waiting.wait()  # another reader downloads it: take its copy (or retry)
        try:
            scratch = self.scratch_path(".part")
            try:
                fetch(scratch)
                metrics.OBJECT_CACHE_MISSES.inc()
                return self.admit(key, scratch)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    scratch.unlink()
        finally:
            with self._lock:
                del self._loading[key]
            done.set()

    def admit(self, key: str, source: Path) -> Path:
        """Move a finished local file (same file system) in as ``key``."""
        size = source.stat().st_size
        target = self.path(key)
        private_dir(target.parent)
        with self._lock:
            self._evict(size, keep=key)
            os.replace(source, target)
            if key in self._entries:
                self._bytes -= self._entries.pop(key)
            self._entries[key] = size
            self._bytes += size
            metrics.OBJECT_CACHE_BYTES.set(self._bytes)
        return target

    def drop(self, key: str) -> None:
        """Forget ``key`` and delete its copy (the object was deleted)."""
        with self._lock:
            size = self._entries.pop(key, None)
            if size is not None:
                self._bytes -= size
                metrics.OBJECT_CACHE_BYTES.set(self._bytes)
            with contextlib.suppress(FileNotFoundError):
                self.path(key).unlink()

    @contextlib.contextmanager
    def hold(self, keys: Iterable[str]) -> Iterator[None]:
        """Keep ``keys`` from eviction inside the block."""
        held = list(keys)
        with self._lock:
            for key in held:
                self._held[key] = self._held.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                for key in held:
                    self._held[key] -= 1
                    if not self._held[key]:
                        del self._held[key]

    def _evict(self, incoming: int, keep: str = "") -> None:
        """Evict least recently used entries until ``incoming`` more bytes fit
        (the lock is held)."""
        if self._bytes + incoming <= self.max_bytes:
            return
        for key in list(self._entries):
            if self._bytes + incoming <= self.max_bytes:
                break
            if key in self._held or key == keep:
                continue
            self._bytes -= self._entries.pop(key)
            with contextlib.suppress(FileNotFoundError):
                self.path(key).unlink()
            metrics.OBJECT_CACHE_EVICTIONS.inc()
        if self._bytes + incoming > self.max_bytes:
            log.warning(
                "object cache over its bound: the files in use exceed it",
                cache_bytes=self._bytes + incoming,
                max_bytes=self.max_bytes,
            )
        metrics.OBJECT_CACHE_BYTES.set(self._bytes)
