"""Health, readiness, metrics and the OpenAPI document: served by every role."""

from __future__ import annotations

from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST
from quart import Blueprint, Response

from duckmesh import group_status, metrics, migrations
from duckmesh.api.context import api
from duckmesh.api.http import json_response
from duckmesh.api.openapi import openapi_body
from duckmesh.runtime import Runtime
from duckmesh.storage.protocol import ObjectStoreUnavailable
from duckmesh.supervisors import ActorStatistics

bp = Blueprint("health", __name__)
STORE_UNAVAILABLE = "unavailable"


@bp.get("/v1/health")
async def health() -> Response:
    return json_response({"status": "ok"})


@bp.get("/v1/ready")
async def ready() -> Response:
    body, ok = await readiness(api().rt)
    return json_response(body, 200 if ok else 503)


@bp.get("/v1/metrics")
async def prometheus() -> Response:
    return Response(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)


@bp.get("/v1/openapi.json")
async def openapi() -> Response:
    return Response(openapi_body(), content_type="application/json")


async def readiness(rt: Runtime) -> tuple[dict[str, Any], bool]:
    """The readiness body, and whether this process is ready (else 503)."""
    checks = await _dependency_checks(rt)
    actors = [_actor_json(path, stats) for path, stats in rt.root.tree()] if rt.root else []
    failed = [a["path"] for a in actors if a["state"] == "failed"]
    if failed:
        checks["actors"] = f"failed: {', '.join(failed)}"
    processes = group_status.readiness(rt, checks)  # the process tree (ADR 0012)
    # A remote store that does not answer degrades the node but does not make
    # it unready: ingest still acknowledges into the bus, commits resume
    # when the store is back (ADR 0019).
    store_down = checks.get("object_store") == STORE_UNAVAILABLE
    ok = all(v == "ok" for k, v in checks.items() if not (k == "object_store" and store_down))
    # A tenant whose commits fail degrades the node but does not make it
    # unready: it still serves every other tenant (docs/OPERATIONS.md).
    failing = [f.as_dict() for f in rt.commit_health.failing()]
    # Low disk refuses ingest (507) but queries still work: degraded, not unready.
    disk = await trio.to_thread.run_sync(rt.disk.status)
    status = ("degraded" if failing or store_down or disk.low else "ready") if ok else "not_ready"
    body = {
        "status": status,
        "checks": checks,
        "disk": disk.as_dict(),
        "actors": actors,
        "failing_tenants": failing,
        "role": rt.config.role,
        "processes": processes,
    }
    return body, ok


async def _dependency_checks(rt: Runtime) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    try:
        current = await rt.db.run(migrations.is_current, transaction=False)
        checks["catalog"] = "ok"
        checks["migrations"] = "ok" if current else "pending"
    except Exception as exc:
        checks["catalog"] = f"unreachable: {type(exc).__name__}"
        checks["migrations"] = "unknown"
    try:
        await trio.to_thread.run_sync(rt.store.check_writable)
        checks["object_store"] = "ok"
    except OSError as exc:
        checks["object_store"] = f"not writable: {exc.strerror}"
    except ObjectStoreUnavailable:
        checks["object_store"] = STORE_UNAVAILABLE
    return checks


def _actor_json(path: str, stats: ActorStatistics) -> dict[str, Any]:
    """An actor's readiness entry. ``last_error`` is only the exception class:
    its message may quote payload values (the full text is in the server log)."""
    out = dict(stats.as_dict(), path=path)
    if stats.last_error is not None:
        out["last_error"] = stats.last_error.partition(":")[0]
    return out
