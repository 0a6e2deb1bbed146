"""The S3-compatible test server (moto's standalone server, from PyPI).

``S3TestServer`` runs ``python -m moto.server`` on a free port and reaches it
through ``Outage``, a small TCP relay the tests can take down and bring back
on the same port: DuckMesh then sees connections refused while the server
keeps its objects (like a MinIO node restarting with its disk), which a
stopped moto could not do (it keeps everything in memory). ``pause`` and
``resume`` (SIGSTOP, SIGCONT) make it hang instead. The storage tests and the
scenario runner's ``--storage s3`` (its ``s3-outage`` fault) both use it.

The server's own request log (werkzeug's access lines on stderr) counts the
object reads (``GET /bucket/key``) that DuckMesh made.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from duckmesh_testing.procs import free_port

ACCESS_KEY = "duckmesh-test"
SECRET_KEY = "duckmesh-test-secret"  # noqa: S105 (moto accepts any credentials)
REGION = "us-east-1"


class Outage:
    """A TCP relay from ``port`` to ``target`` that can refuse connections."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            if self._listener is not listener:  # taken down meanwhile
                client.close()
                upstream.close()
                return
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


class S3TestServer:
    """S3-compatible test server (moto) behind an ``Outage`` relay."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._port = free_port()
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self._port)],
                stdout=log,
                stderr=log,
                env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "1"},
            )
        self._wait_ready()
        self.relay = Outage(self._port)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.relay.port}"

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited; see {self.log_path}")
            try:
                url = f"http://127.0.0.1:{self._port}/"
                urllib.request.urlopen(url, timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"moto server did not start; see {self.log_path}")

    def env(self) -> dict[str, str]:
        """The standard AWS variables a DuckMesh process needs for this server."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def store_env(self, bucket: str, prefix: str = "dm") -> dict[str, str]:
        """Everything a DuckMesh process needs to keep its data files in
        ``s3://bucket/prefix`` on this server (through the relay)."""
        return {
            **self.env(),
            "DUCKMESH_OBJECT_STORE_URL": f"s3://{bucket}/{prefix}",
            "DUCKMESH_S3_ENDPOINT_URL": self.endpoint,
            "DUCKMESH_S3_REGION": REGION,
        }

    def pause(self) -> None:
        """SIGSTOP the server: connections are accepted (by the kernel) and
        then hang until :meth:`resume`, as with a store that stopped answering."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def create_bucket(self, name: str) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self._port}/{name}", method="PUT")
        urllib.request.urlopen(req, timeout=10).close()  # noqa: S310 (our http URL)

    def object_reads(self, bucket: str) -> int:
        """GET requests for objects of ``bucket`` in the server's request log."""
        pattern = re.compile(rf'"(?:\x1b\[[0-9;]*m)*GET /{re.escape(bucket)}/[^ ?"]+ HTTP/1\.1')
        return len(pattern.findall(self.log_path.read_text(errors="replace")))

    def stop(self) -> None:
        self.relay.down()
        self.resume()  # a stopped process would not act on SIGTERM
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
