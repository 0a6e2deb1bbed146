"""A commit's data files put at their keys while its publish begins.

Putting a file makes it durable (local store: fsync the file, rename, fsync
the directory; S3: an upload). A commit starts its puts once the Parquet is
built and the publish transaction waits for them just before it queues its
COMMIT (``wait`` in its last hook), so the fsyncs overlap the transaction's
first round trips instead of preceding them, and a snapshot still never
lists a file that is not durable: a put that fails or is slow delays or
fails the COMMIT, never follows it.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor, Future
from pathlib import Path

from duckmesh import unsafe
from duckmesh.storage.protocol import ObjectStore


class BackgroundPuts:
    """Scratch files to put at their keys, one after the other, on one of
    the committer's long-lived workers (a thread started per commit would
    wait to be scheduled first: milliseconds on a busy host)."""

    def __init__(self, store: ObjectStore, workers: Executor) -> None:
        self.store = store
        self.workers = workers
        self._items: list[tuple[Path, str, str]] = []
        self._running: Future[None] | None = None
        self._error: BaseException | None = None

    def add(self, scratch: Path, key: str, checksum: str) -> None:
        self._items.append((scratch, key, checksum))

    def start(self) -> None:
        self._running = self.workers.submit(self._run)

    def _run(self) -> None:
        try:
            for scratch, key, checksum in self._items:
                if not unsafe.broken("publish_before_durable"):  # TEST ONLY: never put
                    self.store.put_file(scratch, key, checksum)
        except BaseException as exc:  # handed to the publish by wait()
            self._error = exc
        finally:
            self._discard()

    def _discard(self) -> None:
        for scratch, _, _ in self._items:
            if scratch.exists():
                os.unlink(scratch)

    def wait(self) -> None:
        """Until every file is put; raises what a put raised."""
        self.close()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Until the puts are over (or, never started, the scratch files gone)."""
        if self._running is None:
            self._discard()
        else:
            self._running.result()  # _run keeps its error for wait()
