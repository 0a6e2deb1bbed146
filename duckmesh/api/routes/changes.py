"""``GET /v1/tables/{name}/changes``: the change feed of one table between two
snapshots (``query.changes``), in any result format ``Accept`` names.

JSON is built whole (``row_limit`` and the JSON size cut apply, like a
query); the other formats stream with the ``DuckMesh-*`` headers of
``POST /v1/query`` plus ``DuckMesh-From-Snapshot``.
"""

from __future__ import annotations

import contextlib
import functools

import trio
from quart import Blueprint, Response

from duckmesh.api.bodies import int_arg
from duckmesh.api.context import api, require
from duckmesh.api.http import Principal, json_response
from duckmesh.api.routes.query import result_headers, result_media
from duckmesh.errors import DuckMeshError
from duckmesh.query._formats import JSON
from duckmesh.query._streaming import start_stream
from duckmesh.query.changes import changes_json, plan_changes, produce_changes
from duckmesh.query.sandbox import QueryLimits

bp = Blueprint("changes", __name__)
# Past the time limit a stream is answered QUERY_TIMEOUT after this grace.
_GRACE_S = 0.5


@bp.get("/v1/tables/<name>/changes")
@require("query_reader")
async def table_changes(p: Principal, name: str) -> Response:
    media = result_media()
    rt = api().rt
    settings = rt.queries.settings
    from_id = int_arg("from_snapshot")
    if from_id is None:
        raise DuckMeshError(
            "VALIDATION_FAILED",
            "from_snapshot is required (0 for everything up to to_snapshot)",
            field="from_snapshot",
        )
    to_id = int_arg("to_snapshot", 1)
    row_limit = int_arg("row_limit", 1, settings.max_row_limit) or settings.row_limit
    limits = QueryLimits(
        memory_limit_mb=settings.memory_limit_mb,
        threads=settings.threads,
        timeout_s=settings.timeout_s,
        row_limit=row_limit,
    )
    feed = await plan_changes(rt.db, rt.store, p.tenant_id, name, from_id, to_id)
    if media == JSON:
        return json_response(await trio.to_thread.run_sync(changes_json, feed, limits))
    work = functools.partial(produce_changes, feed, limits, media, settings.stream_readahead_bytes)
    head, chunks = await start_stream(contextlib.ExitStack(), work, limits.timeout_s + _GRACE_S)
    snapshot = {
        "snapshot_id": feed.to_snapshot.snapshot_id,
        "snapshot_time": feed.to_snapshot.created_at.isoformat(),
        "max_visibility_token": feed.to_snapshot.max_visibility_token,
    }
    headers = result_headers(snapshot, head, row_limit)
    headers["DuckMesh-From-Snapshot"] = str(
        feed.from_snapshot.snapshot_id if feed.from_snapshot else 0
    )
    response = Response(chunks, content_type=media, headers=headers)
    response.timeout = None  # the feed's own deadline bounds the stream
    return response
