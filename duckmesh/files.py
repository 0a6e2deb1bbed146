"""Private files: the modes of everything DuckMesh keeps on disk.

Every directory DuckMesh creates under the data directory is ``0700`` and
every file it writes (Parquet objects, scratch files, the catalog password)
``0600``: other local users can read no tenant's data and no secret. A data
directory left with looser modes by an older version is tightened on start
(one log line says how many entries changed). The embedded Postgres keeps
its own directory (``pg``), whose modes Postgres itself enforces.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import structlog

DIR_MODE = 0o700
FILE_MODE = 0o600
# When root runs the embedded Postgres as another system user (pgserver does
# that), that user must traverse the data directory to reach ``pg``; x only:
# it still cannot list the directory, and everything inside is private.
TRAVERSE_MODE = 0o711
POSTGRES_DIR = "pg"

log = structlog.get_logger("duckmesh.files")


def private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents as ``0700``; return it.

    Directories that already exist keep their mode (the parents of the data
    directory are not ours to change; ours are tightened on start).
    """
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # another thread or process made it first
        os.chmod(directory, DIR_MODE)  # mkdir's mode is filtered by the umask
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write a new file readable by the owner only, atomically (temp + rename)."""
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


def _loose(mode: int, wanted: int) -> bool:
    return bool(stat.S_IMODE(mode) & ~wanted & 0o777)


def tighten_tree(data_dir: Path, *, root_mode: int = DIR_MODE) -> int:
    """Make the data directory private: ``root_mode`` on it, ``0700`` on every
    directory and ``0600`` on every file below, except the Postgres directory.
    Returns how many entries changed. Symbolic links are left alone."""
    changed = 0
    if _loose(data_dir.lstat().st_mode, root_mode):
        os.chmod(data_dir, root_mode)
        changed += 1
    for dirpath, dirnames, filenames in os.walk(data_dir):
        if Path(dirpath) == data_dir:
            dirnames[:] = [d for d in dirnames if d != POSTGRES_DIR]
        for name, wanted in [(d, DIR_MODE) for d in dirnames] + [(f, FILE_MODE) for f in filenames]:
            changed += tighten_entry(os.path.join(dirpath, name), wanted)
    return changed


def tighten_entry(path: str, wanted: int) -> int:
    """Give one entry ``wanted`` mode if it is looser; 1 when it changed.
    Other processes of the group create and delete scratch and probe files
    while this walks, so an entry that vanished is simply skipped."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode) or not _loose(mode, wanted):
            return 0
        os.chmod(path, wanted)
    except FileNotFoundError:
        return 0
    return 1


def warn_if_root(data_dir: Path) -> bool:
    """Log a warning (not an error: CI containers run as root) when root runs
    the server; root can read every tenant's files whatever their modes."""
    if os.geteuid() != 0:
        return False
    log.warning(
        "running as root: run DuckMesh as an unprivileged user that owns the data directory",
        data_dir=str(data_dir),
    )
    return True


def prepare_data_dir(data_dir: Path, *, embedded_postgres: bool) -> None:
    """Create the data directory private, or tighten an existing one."""
    private_dir(data_dir)
    root_mode = TRAVERSE_MODE if os.geteuid() == 0 and embedded_postgres else DIR_MODE
    changed = tighten_tree(data_dir, root_mode=root_mode)
    if changed:
        log.warning(
            "tightened file modes in the data directory",
            data_dir=str(data_dir),
            entries=changed,
        )
