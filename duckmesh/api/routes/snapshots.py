"""Snapshots: list, describe one (tables, watermarks, files), pin and unpin,
restore an older one as the latest."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response

from duckmesh.api.bodies import MAX_INT, PinBody, RestoreBody, int_arg
from duckmesh.api.context import api, require
from duckmesh.api.http import Principal, json_body, json_response
from duckmesh.catalog import commands, reads
from duckmesh.catalog.snapshot_restore import restore_snapshot
from duckmesh.db import Conn, Database
from duckmesh.errors import DuckMeshError

bp = Blueprint("snapshots", __name__)


@bp.get("/v1/snapshots")
@require("query_reader")
async def list_snapshots(p: Principal) -> Response:
    limit = int_arg("limit", 1, 1000)
    limit = 50 if limit is None else limit
    before_id = int_arg("before")
    snaps = await api().rt.db.run(
        lambda c: reads.list_snapshots(c, p.tenant_id, before_id, limit), transaction=False
    )
    next_before = snaps[-1].snapshot_id if len(snaps) == limit else None
    return json_response({"snapshots": [s.to_json() for s in snaps], "next_before": next_before})


@bp.get("/v1/snapshots/<int:snapshot_id>")
@require("query_reader")
async def get_snapshot(p: Principal, snapshot_id: int) -> Response:
    if snapshot_id > MAX_INT:  # the route's converter takes any digits
        raise DuckMeshError(
            "VALIDATION_FAILED",
            f"a snapshot id is an integer from 1 to {MAX_INT}",
            field="snapshot_id",
        )
    return json_response(await describe_snapshot(api().rt.db, p.tenant_id, snapshot_id))


@bp.post("/v1/snapshots/pin")
@require("table_admin")
async def pin(p: Principal) -> Response:
    body = PinBody.parse(await json_body())
    await api().run_command(
        p,
        lambda c: commands.pin_snapshot(
            c, p.tenant_id, body.snapshot_id, body.pinned, body.reason, actor=p.key_id
        ),
    )
    return json_response({"snapshot_id": body.snapshot_id, "pinned": body.pinned})


@bp.post("/v1/snapshots/restore")
@require("table_admin", "ops_admin")
async def restore(p: Principal) -> Response:
    body = RestoreBody.parse(await json_body())
    result = await api().run_command(
        p, lambda c: restore_snapshot(c, p.tenant_id, body.snapshot_id, actor=p.key_id)
    )
    return json_response(result)


async def describe_snapshot(db: Database, tenant: str, snapshot_id: int) -> dict[str, Any]:
    """A snapshot with the tables it had, their watermarks and their files."""

    def load(c: Conn) -> Any:
        snap = reads.get_snapshot(c, tenant, snapshot_id)
        if snap is None:
            return None
        files = reads.snapshot_files(c, tenant, snapshot_id)
        marks = reads.table_watermarks(c, tenant, snapshot_id)
        tables = reads.tables_as_of(c, tenant, snap.created_at)
        return snap, files, marks, tables

    found = await db.run(load, transaction=False)
    if found is None:
        raise DuckMeshError(
            "SNAPSHOT_NOT_FOUND", f"no snapshot {snapshot_id}", snapshot_id=snapshot_id
        )
    snap, files, marks, tables = found
    body: dict[str, Any] = snap.to_json()
    body["tables"] = [
        {
            "name": t.name,
            "table_id": t.table_id,
            "schema_version": t.schema_version,
            "watermark": marks.get(t.table_id, 0),
            "files": [f.to_json() for f in files if f.table_id == t.table_id],
        }
        for t in tables
    ]
    return body
