"""What ``duckmesh serve`` holds for its whole life: the data-directory lock
and the listening socket.

The lock: the process that owns the embedded Postgres takes an exclusive
``flock`` on ``DATA_DIR/serve.lock`` (``0600``, holding its pid) before it
starts anything, so a second ``duckmesh serve`` on the same directory is
refused at once with one line naming the directory and the holder's pid. The
kernel drops the lock when the holder dies, however it dies.

The listening socket is bound once, before the catalog is opened, so a port
in use is one line and exit status 2 instead of a crash loop; Hypercorn
serves on it (``fd://N``), and in a process group every API worker inherits
it and accepts on the same port (ADR 0012).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from duckmesh.files import FILE_MODE, private_dir

LOCK_FILE = "serve.lock"
BACKLOG = 1024


class StartRefused(Exception):
    """``duckmesh serve`` cannot start; the message is the one line to print."""


class DataDirLock:
    """An exclusive, process-lifetime lock on a data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.path = self.data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`StartRefused` naming the holder."""
        private_dir(self.data_dir)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StartRefused(
                f"data directory {self.data_dir} is in use by another duckmesh serve (pid {holder})"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd  # not inheritable: children never hold the lock

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def open_listener(host: str, port: int) -> socket.socket:
    """Bind and listen on ``host:port``; :class:`StartRefused` when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartRefused(f"port {port} on {host} is already in use") from None
        raise StartRefused(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def inherited_listener(fd: int) -> socket.socket:
    """The listening socket a group root passed to this worker as ``fd``."""
    return socket.socket(fileno=fd)
