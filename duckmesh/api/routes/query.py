"""The query plane's routes: ``POST /v1/query`` (SQL over exactly one
snapshot, ``query.service``) and ``GET /v1/ui/schema`` (what a console or
shell shows before the first query: the latest snapshot's tables).

The ``Accept`` header picks the result format: JSON (the default) is built
whole; Arrow IPC stream, CSV, NDJSON and Parquet are streamed, with the
snapshot, truncation and statistics in ``DuckMesh-*`` response headers.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, g, request

from duckmesh.api.bodies import QueryBody
from duckmesh.api.context import api, require
from duckmesh.api.http import Principal, json_body, json_response
from duckmesh.catalog import reads
from duckmesh.catalog.model import DataFile, Snapshot, TableDef
from duckmesh.db import Conn, Database
from duckmesh.errors import DuckMeshError
from duckmesh.query._formats import JSON, MEDIA_TYPES
from duckmesh.query.stream import StreamHead

bp = Blueprint("query", __name__)


def result_media() -> str:
    """The media type the client accepts best; NOT_ACCEPTABLE when none is offered."""
    if not request.headers.get("Accept", "").strip():
        return JSON
    media = request.accept_mimetypes.best_match(MEDIA_TYPES)
    if media is None:
        raise DuckMeshError(
            "NOT_ACCEPTABLE",
            f"no result format matches the Accept header; offered: {', '.join(MEDIA_TYPES)}",
            offered=list(MEDIA_TYPES),
        )
    return media


def result_headers(snapshot: dict[str, Any], head: StreamHead, row_limit: int) -> dict[str, str]:
    truncated = "unknown" if head.truncated is None else str(head.truncated).lower()
    headers = {
        "DuckMesh-Snapshot-Id": ""
        if snapshot["snapshot_id"] is None
        else str(snapshot["snapshot_id"]),
        "DuckMesh-Snapshot-Time": snapshot["snapshot_time"] or "",
        "DuckMesh-Max-Visibility-Token": str(snapshot["max_visibility_token"]),
        "DuckMesh-Truncated": truncated,
        "DuckMesh-Row-Limit": str(row_limit),
        "DuckMesh-Scanned-Files": str(head.scanned_files),
        "DuckMesh-Scanned-Bytes": str(head.scanned_bytes),
        "DuckMesh-Execution-Ms": f"{head.execution_ms:.3f}",
    }
    return {name: value for name, value in headers.items() if value}


@bp.post("/v1/query")
@require("query_reader")
async def query(p: Principal) -> Response:
    media = result_media()
    body = QueryBody.parse(await json_body())
    queries = api().rt.queries
    req = body.to_request(queries)
    if media == JSON:
        started = g.get("started")  # set when the request arrived (api/app.py)
        return json_response(await queries.execute(p.tenant_id, req, p.roles, started))
    snapshot, head, chunks = await queries.stream(p.tenant_id, req, media)
    row_limit = queries.settings.row_limit if req.row_limit is None else req.row_limit
    response = Response(
        chunks, content_type=media, headers=result_headers(snapshot, head, row_limit)
    )
    response.timeout = None  # the query's own deadline bounds the stream
    return response


@bp.get("/v1/ui/schema")
@require("query_reader")
async def ui_schema(p: Principal) -> Response:
    return json_response(await describe_schema(api().rt.db, p.tenant_id))


async def describe_schema(db: Database, tenant: str) -> dict[str, Any]:
    """The tables of the latest snapshot with their columns, keys, partitioning
    and sizes, read from the catalog alone (no query runs).

    ``row_count`` is exact for tables without a primary key (they only take
    inserts); a keyed table's rows are its distinct live keys, which only a
    scan can count, so it is null there and ``stored_records`` (every stored
    version and delete) is the upper bound."""

    def load(c: Conn) -> tuple[Snapshot | None, list[TableDef], list[DataFile]]:
        snap = reads.latest_snapshot(c, tenant)
        if snap is None:
            return None, reads.list_tables(c, tenant), []
        tables = reads.tables_as_of(c, tenant, snap.created_at)
        return snap, tables, reads.snapshot_files(c, tenant, snap.snapshot_id)

    snap, tables, files = await db.run(load, transaction=False)
    described = []
    for table in tables:
        mine = [f for f in files if f.table_id == table.table_id]
        stored = sum(f.record_count for f in mine)
        described.append(
            {
                "name": table.name,
                "columns": [c.to_json() for c in table.columns],
                "primary_key": list(table.primary_key),
                "partition_by": table.partition_by,
                "schema_version": table.schema_version,
                "files": len(mine),
                "size_bytes": sum(f.size_bytes for f in mine),
                "stored_records": stored,
                "row_count": None if table.primary_key else stored,
            }
        )
    return {
        "snapshot_id": snap.snapshot_id if snap else None,
        "snapshot_time": snap.created_at.isoformat() if snap else None,
        "max_visibility_token": snap.max_visibility_token if snap else 0,
        "tables": described,
    }
