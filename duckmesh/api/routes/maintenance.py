"""On-demand maintenance runs for the caller's tenant (``ops_admin``):
integrity check, retention (expiry and GC) and compaction.

Each job is synchronous catalog and file work, so it runs in a worker
thread that is never abandoned: a cancelled request still leaves the job
finished or not started, never half-recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import attrs
import trio
from quart import Blueprint, Response

from duckmesh.api.context import acting, api, require
from duckmesh.api.http import Principal, json_response
from duckmesh.errors import DuckMeshError
from duckmesh.maintenance.results import IntegrityReport

bp = Blueprint("maintenance", __name__)


class _Summary(Protocol):
    def to_json(self) -> dict[str, object]: ...


S = TypeVar("S", bound=_Summary)


async def _run_job(p: Principal, job: Callable[[str], S]) -> S:
    with acting(p):
        return await trio.to_thread.run_sync(job, p.tenant_id, abandon_on_cancel=False)


def _completed(summary: _Summary) -> Response:
    return json_response({"status": "completed", "summary": summary.to_json()})


@bp.post("/v1/integrity/run")
@require("ops_admin")
async def run_integrity(p: Principal) -> Response:
    report = await _run_job(p, api().integrity.verify)
    if not report.ok:
        raise _integrity_failed(report)
    return _completed(report)


@bp.post("/v1/retention/run")
@require("ops_admin")
async def run_retention(p: Principal) -> Response:
    return _completed(await _run_job(p, api().collector.retain))


@bp.post("/v1/compaction/run")
@require("ops_admin")
async def run_compaction(p: Principal) -> Response:
    return _completed(await _run_job(p, api().compactor.compact))


def _integrity_failed(report: IntegrityReport) -> DuckMeshError:
    return DuckMeshError(
        "INTEGRITY_CHECK_FAILED",
        f"{len(report.missing)} missing, {len(report.size_mismatch)} wrong size,"
        f" {len(report.checksum_mismatch)} wrong checksum"
        f" of {report.files_checked} files",
        **attrs.asdict(report),
    )
