"""``POST /v1/ingest/{table}``: validate a whole request, append it, answer a receipt.

``accept`` is the service the route calls: validation against the table's
current schema, backpressure, quotas and rate limits all come before the
write, so a refused request writes nothing.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from quart import Blueprint, Response, request

from duckmesh import metrics
from duckmesh.api.bodies import IngestBody
from duckmesh.api.context import ApiContext, api, require
from duckmesh.api.http import Principal, json_body, json_response
from duckmesh.bus import receipts_summary
from duckmesh.ingest.upload import ingest_upload, is_upload
from duckmesh.ingest.validation import validate_records
from duckmesh.query.barrier import wait_visible

bp = Blueprint("ingest", __name__)
log = structlog.get_logger("duckmesh.api")


@bp.post("/v1/ingest/<table>")
@require("ingest_writer")
async def ingest(p: Principal, table: str) -> Response:
    started = time.perf_counter()
    ctx = api()
    ctx.rt.disk.check()  # 507 DISK_LOW before anything is read or written
    if is_upload(request.path, request.headers.get("Content-Type")):
        receipt = await upload(ctx, p.tenant_id, table)
    else:
        body = IngestBody.parse(await json_body(), ctx.rt.config.max_consistency_timeout_ms)
        receipt = await accept(ctx, p.tenant_id, table, body, started)
    # Debug level: one line per write is too many at info. With the trace id
    # bound, it starts a write's trail (the coordinator's "committed" line).
    log.debug(
        "ingest accepted",
        tenant_id=p.tenant_id,
        table=table,
        max_visibility_token=receipt.get("max_visibility_token"),
    )
    # Written, but the answer is lost: how clients' retries are tested.
    ctx.rt.faults.hit("api.ingest.after_append")
    return json_response(receipt)


async def upload(ctx: ApiContext, tenant: str, table: str) -> dict[str, Any]:
    """A CSV, NDJSON, Arrow or Parquet upload: the same admission as records."""

    async def admit(rows: int) -> None:
        await ctx.backlog.check(tenant)
        await ctx.storage_quota.check(tenant)
        ctx.rate_limiter.take(tenant, rows)

    tv = await ctx.validators.get(tenant, table)
    return await ingest_upload(ctx.rt, request, tenant, tv, admit)


async def accept(
    ctx: ApiContext, tenant: str, table: str, body: IngestBody, started: float
) -> dict[str, Any]:
    """Validate, admit and append ``body``'s records; the receipt as JSON."""
    rt = ctx.rt
    tv = await ctx.validators.get(tenant, table)
    records = validate_records(
        tv,
        body.records,
        max_records=rt.config.max_records_per_request,
        max_record_bytes=rt.config.max_record_bytes,
    )
    await ctx.backlog.check(tenant)
    await ctx.storage_quota.check(tenant)
    ctx.rate_limiter.take(tenant, len(records))
    receipts = await rt.ingest.submit(tenant, records)
    duplicates, top = receipts_summary(receipts)
    accepted = len(receipts) - duplicates
    metrics.INGEST_ACK_LATENCY.observe(time.perf_counter() - started)
    metrics.INGEST_RECORDS.inc(accepted)
    metrics.INGEST_DUPLICATES.inc(duplicates)
    metrics.INGEST_REQUESTS.labels(status="accepted").inc()
    result: dict[str, Any] = {
        "accepted_count": accepted,
        "duplicate_count": duplicates,
        "max_visibility_token": top,
        "visible_snapshot_id": None,
        "status": "partial_duplicate" if duplicates else "accepted",
    }
    if body.options.wait_for_visibility:
        timeout_s = rt.queries.consistency_timeout(body.options.visibility_timeout_ms)
        result["visible_snapshot_id"] = await wait_visible(
            rt.db,
            rt.bus,
            rt.notifications,
            tenant,
            top,
            timeout_s,
            skip=rt.queries.settings.unsafe_skip_barrier,
        )
        result["status"] = "visible"
    return result
