"""The embedded Postgres of the single-node default (ADR 0004).

Without ``DUCKMESH_CATALOG_DSN`` DuckMesh starts a real Postgres from the
``pgserver`` wheel inside ``DUCKMESH_DATA_DIR/pg``, listening only on a Unix
socket in that directory, and stops it on shutdown. A server left running by
a crashed process is reused, not duplicated.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


def _pgserver() -> Any:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI machines); harmless.
        warnings.simplefilter("ignore")
        import pgserver

        return pgserver


class EmbeddedPostgres:
    """Start, locate and stop the Postgres that lives in the data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "pg").resolve()
        self._server: Any = None
        self.adopted = False  # True when another process had already started it

    def start(self) -> str:
        """Start (or adopt) the server and return a libpq DSN for it."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        pg = _pgserver()
        from pgserver.utils import PostmasterInfo

        running = PostmasterInfo.read_from_pgdata(self.pgdata)
        self.adopted = running is not None and running.is_running()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._server = pg.get_server(self.pgdata, cleanup_mode=None)
        uri: str = self._server.get_uri()
        return uri

    def stop(self) -> None:
        """Stop the server we started (fast shutdown: sessions are rolled back).

        A server adopted from another live process is left running for it.
        """
        if self._server is None:
            return
        if self.adopted:
            self._server = None
            return
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

        info = self._server.get_postmaster_info()
        if info is not None and info.is_running():
            pg_ctl(
                ["-w", "-m", "fast", "stop"],
                pgdata=self.pgdata,
                user=self._server.system_user,
                timeout=30,
            )
        self._server = None
