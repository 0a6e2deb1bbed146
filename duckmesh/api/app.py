"""The Quart-Trio application: routes of SPEC §4, each in the OpenAPI document.

Handlers stay thin: parse and validate the request, call a service, shape
the response. Every error leaves through ``http.error_response``.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from importlib import resources
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from duckmesh import metrics, migrations
from duckmesh.api.http import (
    Authenticator,
    Principal,
    error_response,
    json_body,
    json_response,
    log,
    receive_body,
    require,
    start_trace,
)
from duckmesh.catalog import audit, commands, reads
from duckmesh.catalog.commands import stream_tenant
from duckmesh.errors import DuckMeshError
from duckmesh.events import acting_as, call_retrying
from duckmesh.ingest.limits import RateLimiter, StorageQuota
from duckmesh.ingest.upload import ingest_upload, is_upload
from duckmesh.ingest.validation import TableValidator, parse_options, validate_records
from duckmesh.maintenance.actors import collector_for, compactor_for
from duckmesh.maintenance.integrity import IntegrityChecker
from duckmesh.query.barrier import wait_for_token
from duckmesh.query.service import QueryRequest
from duckmesh.runtime import Runtime
from duckmesh.supervisors import ActorStatistics

_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "BAD_REQUEST",
    413: "PAYLOAD_TOO_LARGE",
    429: "RATE_LIMITED",
    503: "NOT_READY",
}
# Compiled ingest validators are dropped on every table event and, in case a
# notification is lost, after this long at most.
VALIDATOR_CACHE_S = 10.0
# Largest integer a request may give for an id, token, limit or timeout: the
# catalog stores them as Postgres BIGINT.
MAX_INT = 2**63 - 1


class _Validators:
    """Per-(tenant, table) ingest validators.

    ``forget`` bumps a generation, and a validator built from a read that
    started before the bump is not kept: a schema change that lands while a
    request is loading the table cannot leave the old schema cached.
    """

    def __init__(self, load: Callable[[str, str], Awaitable[Any]]) -> None:
        self._load = load
        self._cache: dict[tuple[str, str], tuple[TableValidator, float]] = {}
        self._generation = 0

    def forget(self, key: tuple[str, str] | None = None) -> None:
        self._generation += 1
        if key is None:
            self._cache.clear()
        else:
            self._cache.pop(key, None)

    async def get(self, tenant: str, name: str) -> TableValidator:
        cached = self._cache.get((tenant, name))
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        generation = self._generation
        tv = TableValidator.for_table(await self._load(tenant, name))
        if generation == self._generation:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[(tenant, name)] = (tv, time.monotonic() + VALIDATOR_CACHE_S)
        return tv


def _code_for_status(status: int) -> str:
    """The error code of a Werkzeug/Quart HTTP error (unexpected exceptions
    arrive as a 500: never reported as the client's fault)."""
    return _HTTP_CODES.get(status, "INTERNAL" if status >= 500 else "BAD_REQUEST")


def load_openapi() -> dict[str, Any]:
    text = resources.files("duckmesh.api").joinpath("openapi.json").read_text()
    doc: dict[str, Any] = json.loads(text)
    return doc


def _actor_json(path: str, stats: ActorStatistics) -> dict[str, Any]:
    """An actor's readiness entry. ``last_error`` is only the exception class:
    its message may quote payload values (the full text is in the server log)."""
    out = dict(stats.as_dict(), path=path)
    if stats.last_error is not None:
        out["last_error"] = stats.last_error.partition(":")[0]
    return out


def _int_field(body: dict[str, Any], name: str, lo: int = 0) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) is not int or not lo <= value <= MAX_INT:
        raise DuckMeshError(
            "VALIDATION_FAILED", f"{name} must be an integer from {lo} to {MAX_INT}", field=name
        )
    return value


def _int_arg(name: str, lo: int = 0, hi: int = MAX_INT) -> int | None:
    """An integer query-string parameter in ``lo..hi`` (ids are Postgres BIGINTs)."""
    raw = request.args.get(name)
    if raw is None:
        return None
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 19 else -1
    if not lo <= value <= hi:
        raise DuckMeshError(
            "VALIDATION_FAILED", f"{name} must be an integer from {lo} to {hi}", field=name
        )
    return value


def _time_field(body: dict[str, Any], name: str) -> dt.datetime | None:
    value = body.get(name)
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise DuckMeshError(
            "VALIDATION_FAILED", f"{name} must be an ISO 8601 timestamp", field=name
        )
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed


def create_app(rt: Runtime) -> QuartTrio:
    app = QuartTrio("duckmesh")
    app.config["MAX_CONTENT_LENGTH"] = rt.config.max_request_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    auth = Authenticator(rt.db)
    limiter = RateLimiter(rt.config.ingest_rate_limit)
    storage = StorageQuota(
        rt.db,
        rt.config.tenant_storage_quota_bytes,
        lambda tenant: rt.notifications.watermarks.get(tenant, (None, 0))[0],
    )
    rt.notifications.on_event(auth.invalidate)

    async def _table(tenant: str, name: str) -> Any:
        table = await rt.db.run(lambda c: reads.get_table(c, tenant, name), transaction=False)
        if table is None:
            raise DuckMeshError("TABLE_NOT_FOUND", f"no table {name!r}", table=name)
        return table

    validators = _Validators(_table)

    def forget_tables(stream: str) -> None:
        if stream_tenant(stream, "tables") is not None:
            validators.forget()

    rt.notifications.on_event(forget_tables)

    @app.before_request
    async def _trace() -> None:
        start_trace()
        if not is_upload(request.path, request.headers.get("Content-Type")):
            await receive_body()  # an upload streams its own body (ingest/upload.py)

    @app.errorhandler(DuckMeshError)
    async def _duckmesh_error(exc: DuckMeshError) -> Response:
        if request.path.startswith("/v1/ingest/"):
            # Refused ingest requests (validation, 409, 429, ...) are counted too.
            metrics.INGEST_REQUESTS.labels(status=exc.error_code).inc()
            await receive_body()  # an upload refused before its body was read
        return error_response(exc)

    @app.errorhandler(RecursionError)
    async def _too_deep(exc: RecursionError) -> Response:
        # Only a hostile input nests deep enough to exhaust the stack (request
        # JSON and type names have their own bounds): the client's fault, not a 500.
        log.warning("recursion limit reached", path=request.path, exc_info=exc)
        return error_response(
            DuckMeshError("BAD_REQUEST", "the request is nested too deeply to process")
        )

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        code = _code_for_status(exc.code or 500)
        # A 500 wraps an unexpected exception: its text stays in the server log.
        message = "internal error" if code == "INTERNAL" else exc.description or exc.name
        return error_response(DuckMeshError(code, message))

    # -- health ------------------------------------------------------------

    @app.get("/v1/health")
    async def health() -> Response:
        return json_response({"status": "ok"})

    @app.get("/v1/ready")
    async def ready() -> Response:
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
        tree = rt.extra.get("tree")
        actors = [_actor_json(path, stats) for path, stats in tree()] if tree else []
        failed = [a["path"] for a in actors if a["state"] == "failed"]
        if failed:
            checks["actors"] = f"failed: {', '.join(failed)}"
        ok = all(v == "ok" for v in checks.values())
        # A tenant whose commits fail degrades the node but does not make it
        # unready: it still serves every other tenant (docs/OPERATIONS.md).
        failing = [f.as_dict() for f in rt.commit_health.failing()]
        status = ("degraded" if failing else "ready") if ok else "not_ready"
        return json_response(
            {
                "status": status,
                "checks": checks,
                "actors": actors,
                "failing_tenants": failing,
                "role": rt.config.role,
            },
            200 if ok else 503,
        )

    @app.get("/v1/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/openapi.json")
    async def openapi() -> Response:
        return json_response(load_openapi())

    if rt.config.role not in ("all", "api"):
        # Coordinator and maintenance processes serve only health, readiness
        # and metrics, so every process of a split deployment can be scraped.
        return app

    # -- tables ------------------------------------------------------------

    @app.post("/v1/tables")
    @require(auth, "table_admin")
    async def create_table(p: Principal) -> Response:
        body = await json_body()
        with _acting(p):
            table = await _with_retries(
                rt,
                lambda c: commands.create_table(
                    c, p.tenant_id, body, actor=p.key_id, trace_id=_trace_id()
                ),
            )
        validators.forget((p.tenant_id, table.name))
        return json_response(table.to_json(), 201)

    @app.get("/v1/tables")
    @require(auth, "query_reader", "table_admin")
    async def list_tables(p: Principal) -> Response:
        tables = await rt.db.run(lambda c: reads.list_tables(c, p.tenant_id), transaction=False)
        return json_response({"tables": [t.to_json() for t in tables]})

    @app.get("/v1/tables/<name>")
    @require(auth, "query_reader", "table_admin")
    async def get_table(p: Principal, name: str) -> Response:
        return json_response((await _table(p.tenant_id, name)).to_json())

    @app.patch("/v1/tables/<name>")
    @require(auth, "table_admin")
    async def evolve_table(p: Principal, name: str) -> Response:
        body = await json_body()
        with _acting(p):
            table = await _with_retries(
                rt,
                lambda c: commands.evolve_table(
                    c, p.tenant_id, name, body, actor=p.key_id, trace_id=_trace_id()
                ),
            )
        # Our own change applies to our next ingest at once, not when the
        # notification comes back.
        validators.forget((p.tenant_id, name))
        return json_response(table.to_json())

    @app.delete("/v1/tables/<name>")
    @require(auth, "table_admin")
    async def drop_table(p: Principal, name: str) -> Response:
        with _acting(p):
            await _with_retries(
                rt,
                lambda c: commands.drop_table(
                    c, p.tenant_id, name, actor=p.key_id, trace_id=_trace_id()
                ),
            )
        validators.forget((p.tenant_id, name))
        return json_response({"dropped": name})

    # -- ingest ------------------------------------------------------------

    @app.post("/v1/ingest/<table>")
    @require(auth, "ingest_writer")
    async def ingest(p: Principal, table: str) -> Response:
        started = time.perf_counter()
        if is_upload(request.path, request.headers.get("Content-Type")):

            async def admit(rows: int) -> None:
                _check_backpressure(rt, p.tenant_id)
                await storage.check(p.tenant_id)
                limiter.take(p.tenant_id, rows)

            tv = await validators.get(p.tenant_id, table)
            return json_response(await ingest_upload(rt, request, p.tenant_id, tv, admit))
        body = await json_body()
        unknown = sorted(set(body) - {"records", "wait_for_visibility", "visibility_timeout_ms"})
        if unknown:
            raise DuckMeshError("VALIDATION_FAILED", f"unknown keys {unknown}", field=unknown[0])
        options = parse_options(body, rt.config.max_consistency_timeout_ms)
        tv = await validators.get(p.tenant_id, table)
        records = validate_records(
            tv,
            body.get("records"),
            max_records=rt.config.max_records_per_request,
            max_record_bytes=rt.config.max_record_bytes,
        )
        _check_backpressure(rt, p.tenant_id)
        await storage.check(p.tenant_id)
        limiter.take(p.tenant_id, len(records))
        receipts = await rt.ingest.submit(p.tenant_id, records)
        duplicates = sum(1 for r in receipts if r.duplicate)
        accepted = len(receipts) - duplicates
        top = max(r.token for r in receipts)
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
        if options.wait_for_visibility:
            snap = await wait_for_token(
                rt.db,
                rt.bus,
                rt.notifications,
                p.tenant_id,
                top,
                rt.queries.consistency_timeout(options.visibility_timeout_ms),
                kind="ingest",
            )
            result["visible_snapshot_id"] = snap.snapshot_id if snap else None
            result["status"] = "visible"
        return json_response(result)

    # -- query -------------------------------------------------------------

    @app.post("/v1/query")
    @require(auth, "query_reader")
    async def query(p: Principal) -> Response:
        body = await json_body()
        allowed = {
            "sql",
            "params",
            "snapshot_id",
            "snapshot_time",
            "min_visibility_token",
            "consistency_timeout_ms",
            "row_limit",
        }
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise DuckMeshError("VALIDATION_FAILED", f"unknown keys {unknown}", field=unknown[0])
        sql = body.get("sql")
        if not isinstance(sql, str) or not sql.strip():
            raise DuckMeshError("VALIDATION_FAILED", "sql must be a non-empty string", field="sql")
        params = body.get("params")
        if params is not None and not isinstance(params, list):
            raise DuckMeshError("VALIDATION_FAILED", "params must be an array", field="params")
        snapshot_id = _int_field(body, "snapshot_id", 1)
        snapshot_time = _time_field(body, "snapshot_time")
        token = _int_field(body, "min_visibility_token")
        if snapshot_id is not None and snapshot_time is not None:
            raise DuckMeshError(
                "VALIDATION_FAILED", "give at most one of snapshot_id and snapshot_time"
            )
        if snapshot_time is not None and token is not None:
            raise DuckMeshError(
                "TOKEN_SCOPE_MISMATCH",
                "min_visibility_token cannot apply to a snapshot chosen by time",
            )
        timeout_ms = _int_field(body, "consistency_timeout_ms")
        req = QueryRequest(
            sql=sql,
            params=params,
            snapshot_id=snapshot_id,
            snapshot_time=snapshot_time,
            min_visibility_token=token,
            consistency_timeout_s=None
            if timeout_ms is None
            else rt.queries.consistency_timeout(timeout_ms),
            row_limit=_int_field(body, "row_limit", 1),
        )
        return json_response(await rt.queries.execute(p.tenant_id, req))

    # -- snapshots ---------------------------------------------------------

    @app.get("/v1/snapshots")
    @require(auth, "query_reader")
    async def list_snapshots(p: Principal) -> Response:
        limit = _int_arg("limit", 1, 1000)
        limit = 50 if limit is None else limit
        before_id = _int_arg("before")
        snaps = await rt.db.run(
            lambda c: reads.list_snapshots(c, p.tenant_id, before_id, limit), transaction=False
        )
        next_before = snaps[-1].snapshot_id if len(snaps) == limit else None
        return json_response(
            {"snapshots": [s.to_json() for s in snaps], "next_before": next_before}
        )

    @app.get("/v1/snapshots/<int:snapshot_id>")
    @require(auth, "query_reader")
    async def get_snapshot(p: Principal, snapshot_id: int) -> Response:
        if snapshot_id > MAX_INT:  # the route's converter takes any digits
            raise DuckMeshError(
                "VALIDATION_FAILED",
                f"a snapshot id is an integer from 1 to {MAX_INT}",
                field="snapshot_id",
            )

        def load(c: Any) -> Any:
            snap = reads.get_snapshot(c, p.tenant_id, snapshot_id)
            if snap is None:
                return None
            files = reads.snapshot_files(c, p.tenant_id, snapshot_id)
            marks = reads.table_watermarks(c, p.tenant_id, snapshot_id)
            tables = reads.tables_as_of(c, p.tenant_id, snap.created_at)
            return snap, files, marks, tables

        found = await rt.db.run(load, transaction=False)
        if found is None:
            raise DuckMeshError(
                "SNAPSHOT_NOT_FOUND", f"no snapshot {snapshot_id}", snapshot_id=snapshot_id
            )
        snap, files, marks, tables = found
        body = snap.to_json()
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
        return json_response(body)

    @app.post("/v1/snapshots/pin")
    @require(auth, "table_admin")
    async def pin(p: Principal) -> Response:
        body = await json_body()
        snapshot_id = _int_field(body, "snapshot_id", 1)
        pinned = body.get("pinned", True)
        reason = body.get("reason", "")
        if snapshot_id is None or not isinstance(pinned, bool) or not isinstance(reason, str):
            raise DuckMeshError(
                "VALIDATION_FAILED", "snapshot_id (integer), pinned (boolean), reason (string)"
            )
        with _acting(p):
            await _with_retries(
                rt,
                lambda c: commands.pin_snapshot(
                    c, p.tenant_id, snapshot_id, pinned, reason, actor=p.key_id
                ),
            )
        return json_response({"snapshot_id": snapshot_id, "pinned": pinned})

    # -- operations --------------------------------------------------------

    compactor = compactor_for(rt)
    collector = collector_for(rt)

    integrity = IntegrityChecker(rt.db, rt.store)

    @app.post("/v1/integrity/run")
    @require(auth, "ops_admin")
    async def run_integrity(p: Principal) -> Response:
        with _acting(p):
            summary = await trio.to_thread.run_sync(
                integrity.check, p.tenant_id, abandon_on_cancel=False
            )
        if not summary["ok"]:
            raise DuckMeshError(
                "INTEGRITY_CHECK_FAILED",
                f"{len(summary['missing'])} missing, {len(summary['size_mismatch'])} wrong size,"
                f" {len(summary['checksum_mismatch'])} wrong checksum"
                f" of {summary['files_checked']} files",
                **{k: v for k, v in summary.items() if k != "ok"},
            )
        return json_response({"status": "completed", "summary": summary})

    @app.post("/v1/retention/run")
    @require(auth, "ops_admin")
    async def run_retention(p: Principal) -> Response:
        with _acting(p):
            summary = await trio.to_thread.run_sync(
                collector.run, p.tenant_id, abandon_on_cancel=False
            )
        return json_response({"status": "completed", "summary": summary})

    @app.post("/v1/compaction/run")
    @require(auth, "ops_admin")
    async def run_compaction(p: Principal) -> Response:
        with _acting(p):
            summary = await trio.to_thread.run_sync(
                compactor.compact_tenant, p.tenant_id, abandon_on_cancel=False
            )
        return json_response({"status": "completed", "summary": summary})

    @app.get("/v1/audit")
    @require(auth, "ops_admin")
    async def audit_trail(p: Principal) -> Response:
        after = _int_arg("after") or 0
        limit = _int_arg("limit", 1, 1000) or 100
        entries = await rt.db.run(
            lambda c: audit.read_audit(c, p.tenant_id, after, limit), transaction=False
        )
        next_after = entries[-1]["position"] if len(entries) == limit else None
        return json_response({"entries": entries, "next_after": next_after})

    @app.get("/v1/lag")
    @require(auth, "ops_admin")
    async def lag(p: Principal) -> Response:
        latest = await rt.db.in_thread(rt.bus.latest_token, p.tenant_id)
        snap = await rt.db.run(lambda c: reads.latest_snapshot(c, p.tenant_id), transaction=False)
        quarantined = await rt.db.in_thread(rt.bus.quarantined, p.tenant_id)
        watermark = snap.max_visibility_token if snap else 0
        return json_response(
            {
                "latest_token": latest,
                "visible_watermark": watermark,
                "pending_records": latest - watermark,
                "latest_snapshot_id": snap.snapshot_id if snap else None,
                "quarantined_records": quarantined[0],
                "recent_quarantine": quarantined[1],
                "latest_snapshot_age_ms": round(
                    (dt.datetime.now(dt.UTC) - snap.created_at).total_seconds() * 1000
                )
                if snap
                else None,
            }
        )

    return app


async def _with_retries(rt: Runtime, fn: Any) -> Any:
    """Run a catalog command, again when a commit published first."""
    return await rt.db.in_thread(call_retrying, rt.db, fn)


def _trace_id() -> str | None:
    from duckmesh.api.http import current_trace_id

    return current_trace_id()


def _acting(p: Principal) -> AbstractContextManager[None]:
    """Every event this request causes names its key and trace (audit trail)."""
    return acting_as(actor_key_id=p.key_id, trace_id=_trace_id())


def _check_backpressure(rt: Runtime, tenant: str) -> None:
    """429 before collapse: refuse ingest while too much is pending."""
    latest = rt.ingest.latest_token.get(tenant)
    known = rt.notifications.watermarks.get(tenant)
    if latest is None or known is None:
        return
    pending = latest - known[1]
    if pending > rt.config.max_pending_records:
        raise DuckMeshError(
            "RATE_LIMITED",
            f"{pending} records are waiting to become visible; slow down",
            pending_records=pending,
            retry_after_s=1,
        )
