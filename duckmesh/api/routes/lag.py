"""``GET /v1/lag`` (``ops_admin``): how far the tenant's visible data trails its ingest."""

from __future__ import annotations

import datetime as dt
from typing import Any

from quart import Blueprint, Response

from duckmesh.api.context import api, require
from duckmesh.api.http import Principal, json_response
from duckmesh.catalog import reads
from duckmesh.runtime import Runtime

bp = Blueprint("lag", __name__)


@bp.get("/v1/lag")
@require("ops_admin")
async def lag(p: Principal) -> Response:
    return json_response(await tenant_lag(api().rt, p.tenant_id))


async def tenant_lag(rt: Runtime, tenant: str) -> dict[str, Any]:
    """How far the tenant's visible watermark trails the tokens issued."""
    latest = await rt.db.in_thread(rt.bus.latest_token, tenant)
    snap = await rt.db.run(lambda c: reads.latest_snapshot(c, tenant), transaction=False)
    quarantined = await rt.db.in_thread(rt.bus.quarantined, tenant)
    watermark = snap.max_visibility_token if snap else 0
    age_ms = (
        round((dt.datetime.now(dt.UTC) - snap.created_at).total_seconds() * 1000) if snap else None
    )
    return {
        "latest_token": latest,
        "visible_watermark": watermark,
        "pending_records": latest - watermark,
        "latest_snapshot_id": snap.snapshot_id if snap else None,
        "quarantined_records": quarantined[0],
        "recent_quarantine": quarantined[1],
        "latest_snapshot_age_ms": age_ms,
    }
