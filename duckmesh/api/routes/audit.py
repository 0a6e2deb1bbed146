"""The tenant's audit trail (``ops_admin``), paged by position."""

from __future__ import annotations

from quart import Blueprint, Response

from duckmesh.api.bodies import int_arg
from duckmesh.api.context import api, require
from duckmesh.api.http import Principal, json_response
from duckmesh.catalog import audit

bp = Blueprint("audit", __name__)


@bp.get("/v1/audit")
@require("ops_admin")
async def audit_trail(p: Principal) -> Response:
    after = int_arg("after") or 0
    limit = int_arg("limit", 1, 1000) or 100
    entries = await api().rt.db.run(
        lambda c: audit.read_audit(c, p.tenant_id, after, limit), transaction=False
    )
    next_after = entries[-1]["position"] if len(entries) == limit else None
    return json_response({"entries": entries, "next_after": next_after})
