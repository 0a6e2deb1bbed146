"""Table lifecycle: create, list, get, evolve, drop (``table_admin`` writes)."""

from __future__ import annotations

from quart import Blueprint, Response

from duckmesh.api.context import api, require
from duckmesh.api.http import Principal, current_trace_id, json_body, json_response
from duckmesh.api.validators import load_table
from duckmesh.catalog import commands, reads
from duckmesh.catalog.table_requests import CreateTableRequest

bp = Blueprint("tables", __name__)


@bp.post("/v1/tables")
@require("table_admin")
async def create_table(p: Principal) -> Response:
    spec = CreateTableRequest.parse(await json_body())
    ctx = api()
    trace_id = current_trace_id()
    table = await ctx.run_command(
        p, lambda c: commands.create_table(c, p.tenant_id, spec, actor=p.key_id, trace_id=trace_id)
    )
    ctx.validators.forget((p.tenant_id, table.name))
    return json_response(table.to_json(), 201)


@bp.get("/v1/tables")
@require("query_reader", "table_admin")
async def list_tables(p: Principal) -> Response:
    tables = await api().rt.db.run(lambda c: reads.list_tables(c, p.tenant_id), transaction=False)
    return json_response({"tables": [t.to_json() for t in tables]})


@bp.get("/v1/tables/<name>")
@require("query_reader", "table_admin")
async def get_table(p: Principal, name: str) -> Response:
    return json_response((await load_table(api().rt.db, p.tenant_id, name)).to_json())


@bp.patch("/v1/tables/<name>")
@require("table_admin")
async def evolve_table(p: Principal, name: str) -> Response:
    # Validated by commands.evolve_table against the current schema: a body's
    # problems are reported in order with the schema's (SCHEMA_INCOMPATIBLE).
    body = await json_body()
    ctx = api()
    trace_id = current_trace_id()
    table = await ctx.run_command(
        p,
        lambda c: commands.evolve_table(
            c, p.tenant_id, name, body, actor=p.key_id, trace_id=trace_id
        ),
    )
    # Our own change applies to our next ingest at once, not when the
    # notification comes back.
    ctx.validators.forget((p.tenant_id, name))
    return json_response(table.to_json())


@bp.delete("/v1/tables/<name>")
@require("table_admin")
async def drop_table(p: Principal, name: str) -> Response:
    ctx = api()
    trace_id = current_trace_id()
    await ctx.run_command(
        p, lambda c: commands.drop_table(c, p.tenant_id, name, actor=p.key_id, trace_id=trace_id)
    )
    ctx.validators.forget((p.tenant_id, name))
    return json_response({"dropped": name})
