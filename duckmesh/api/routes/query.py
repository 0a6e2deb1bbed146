"""``POST /v1/query``: SQL over exactly one snapshot (``query.service``)."""

from __future__ import annotations

from quart import Blueprint, Response

from duckmesh.api.bodies import QueryBody
from duckmesh.api.context import api, require
from duckmesh.api.http import Principal, json_body, json_response

bp = Blueprint("query", __name__)


@bp.post("/v1/query")
@require("query_reader")
async def query(p: Principal) -> Response:
    body = QueryBody.parse(await json_body())
    queries = api().rt.queries
    return json_response(await queries.execute(p.tenant_id, body.to_request(queries)))
