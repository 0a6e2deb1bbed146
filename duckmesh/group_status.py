"""The process tree in ``/v1/ready`` and ``duckmesh status`` (ADR 0012).

In a process group the root publishes its children's state in the group's
run directory (duckmesh.procgroup); any worker answering ``/v1/ready`` reads
it, so readiness aggregates the whole group: it is ready only while every
child process runs. A single process lists itself.
"""

from __future__ import annotations

import json
import os
from typing import Any

from duckmesh.runtime import Runtime

STATUS_FILE = "group.json"  # duckmesh.procgroup.STATUS_FILE (that module spawns processes)


def readiness(rt: Runtime, checks: dict[str, Any]) -> list[dict[str, Any]]:
    """The process rows (name, role, pid, restarts, state); sets
    ``checks["processes"]`` when this process belongs to a group."""
    if rt.group_dir is None:
        return [
            {
                "name": "root",
                "role": rt.config.role,
                "pid": os.getpid(),
                "restarts": 0,
                "state": "running",
            }
        ]
    try:
        body = json.loads((rt.group_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        checks["processes"] = "unknown: the group root publishes no status"
        return []
    rows: list[dict[str, Any]] = body["processes"]
    down = [f"{r['name']} ({r['state']})" for r in rows if r["state"] != "running"]
    checks["processes"] = f"not running: {', '.join(down)}" if down else "ok"
    return rows
