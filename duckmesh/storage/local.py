"""Local file system object store (the default).

Keys map to paths under ``root``. ``put_file`` fsyncs the source, renames it
into place (atomic within one file system) and fsyncs the directory, so a
crash leaves either no object or the whole object. Scratch files live in
``root/_scratch`` on the same file system so the rename stays atomic.
Directories are created ``0700`` and objects made ``0600`` before they are
renamed into place (see ``duckmesh.files``).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from duckmesh.files import FILE_MODE, private_dir
from duckmesh.storage.protocol import ObjectInfo, check_key

SCRATCH = "_scratch"


class LocalObjectStore:
    def __init__(self, root: Path) -> None:
        self.root = private_dir(root.resolve())
        private_dir(self.root / SCRATCH)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key))

    def put_file(self, source: Path, key: str, checksum: str | None = None) -> ObjectInfo:
        target = self._path(key)
        private_dir(target.parent)
        if target.exists():
            raise FileExistsError(f"object key already used: {key!r}")
        fd = os.open(source, os.O_RDONLY)
        try:
            os.fchmod(fd, FILE_MODE)  # writers (pyarrow, DuckDB) create 0644
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(source, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        info = self.stat(key)
        assert info is not None
        return info

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def local_paths(self, keys: Sequence[str]) -> list[Path]:
        return [self._path(key) for key in keys]

    def checksum(self, key: str) -> str | None:
        return None  # not recorded: the file is local, hashing it is the check

    def directory(self, prefix: str) -> Path:
        """The local directory of a key prefix, created ``0700`` if missing."""
        return private_dir(self._path(prefix))

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size, dt.datetime.fromtimestamp(st.st_mtime, dt.UTC))

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d != SCRATCH]
            for name in filenames:
                path = Path(dirpath) / name
                st = path.stat()
                yield ObjectInfo(
                    str(path.relative_to(self.root)),
                    st.st_size,
                    dt.datetime.fromtimestamp(st.st_mtime, dt.UTC),
                )

    def scratch_dir(self) -> Path:
        return self.root / SCRATCH

    def scratch_path(self, suffix: str = "") -> Path:
        return self.root / SCRATCH / f"{uuid.uuid4().hex}{suffix}"

    def check_writable(self) -> None:
        probe = self.scratch_path(".probe")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
        probe.unlink()
