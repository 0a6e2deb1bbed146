"""``duckmesh serve``: one process per role, or (role ``all``) a supervised
process group (ADR 0012). Refusals (data directory in use, port in use) are
one line and exit status 2; a stop signal during startup still stops the
embedded Postgres.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys

from duckmesh.config import Config

__all__ = ["cmd_serve"]


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    """One process per role, or (role ``all``) a supervised process group.

    ``DUCKMESH_API_WORKERS=1`` with an explicit ``--role all`` keeps the whole
    server in one process (debugging). Refusals (data directory in use, port
    in use) are one line and exit status 2.
    """
    from duckmesh.lifecycle import StartRefused
    from duckmesh.logs import configure_logging
    from duckmesh.procgroup import GROUP_DIR_ENV

    configure_logging(config.log_format, config.log_level, role=config.role)
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        if GROUP_DIR_ENV in os.environ:
            return _serve_group_child(config)
        group = config.role == "all" and not (args.role and config.api_workers == 1)
        return _serve_root(config, group=group)
    except StartRefused as exc:
        print(f"duckmesh: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0  # a stop signal before the server was up: nothing was served
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _interrupt(signum: int, frame: object) -> None:
    # Until Trio takes the stop signals over, they unwind startup through the
    # `finally` blocks (which stop the embedded Postgres) instead of killing it.
    raise KeyboardInterrupt


def _serve_root(config: Config, *, group: bool) -> int:
    """Lock the data directory (when it holds the catalog), bind the port,
    open the catalog, then serve in this process or as a process group."""
    import trio

    from duckmesh.files import warn_if_root
    from duckmesh.lifecycle import DataDirLock, open_listener
    from duckmesh.procgroup import serve_group
    from duckmesh.runtime import build_runtime, migrate_and_bootstrap
    from duckmesh.server import serve

    lock = None if config.catalog_dsn else DataDirLock(config.data_dir)
    if lock is not None:
        lock.acquire()
    try:
        with open_listener(config.http_host, config.http_port) as listener:
            warn_if_root(config.data_dir)  # after the refusals: those are one line
            _log_data_dir(config)
            rt = build_runtime(config, owner=lock is not None)
            try:
                migrate_and_bootstrap(rt)
                if group:
                    return trio.run(serve_group, config, listener, rt.embedded)
                return trio.run(serve, rt, listener)
            finally:
                rt.close()  # stops the embedded Postgres last
    finally:
        if lock is not None:
            lock.release()


def _log_data_dir(config: Config) -> None:
    """Say which data directory is in use, and when a new catalog is created in it."""
    import structlog

    from duckmesh.files import POSTGRES_DIR

    path = str(config.data_dir.resolve())
    if config.catalog_dsn:
        structlog.get_logger("duckmesh").info("data_directory", path=path, catalog="external")
    elif (config.data_dir / POSTGRES_DIR).is_dir():
        structlog.get_logger("duckmesh").info("data_directory", path=path, catalog="existing")
    else:
        structlog.get_logger("duckmesh").warning(
            "data_directory", path=path, catalog="new", message="creating a new catalog here"
        )


def _serve_group_child(config: Config) -> int:
    """A process of a group (duckmesh.procgroup): the catalog is the root's."""
    from pathlib import Path

    import trio

    from duckmesh import procgroup
    from duckmesh.embedded import running_dsn
    from duckmesh.lifecycle import inherited_listener
    from duckmesh.runtime import build_runtime
    from duckmesh.server import serve

    env = os.environ
    dsn = None if config.catalog_dsn else running_dsn(config.data_dir)
    if dsn is None and not config.catalog_dsn:
        print("duckmesh: the process group's embedded Postgres is not running", file=sys.stderr)
        return 1
    rt = build_runtime(config, dsn=dsn, embedded_dsn=dsn is not None)
    rt.group_dir = Path(env[procgroup.GROUP_DIR_ENV])
    fd = env.get(procgroup.LISTEN_FD_ENV)
    listener = inherited_listener(int(fd)) if fd else None
    ready_fd = int(env[procgroup.READY_FD_ENV])

    def report_ready() -> None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)

    try:
        parent = int(env[procgroup.PARENT_PID_ENV])
        return trio.run(
            functools.partial(serve, rt, listener, on_ready=report_ready, parent_pid=parent)
        )
    finally:
        rt.close()
