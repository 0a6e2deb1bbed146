"""``POST /v1/ingest/{table}`` with a CSV, NDJSON, Arrow or Parquet body.

The body is spooled (bounded), decoded, parsed and cast to the table's
schema in a worker thread, then published to the bus as one upload: every
row or none (ADR 0013). Options are query parameters; idempotency is either
the ``Idempotency-Key`` header (the whole request) or ``key_column``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import IO, Any

import attrs
import trio
from werkzeug.exceptions import RequestEntityTooLarge

from duckmesh import metrics, tracing
from duckmesh.bus import UploadReceipt, UploadRequest
from duckmesh.errors import DuckMeshError
from duckmesh.ingest import formats
from duckmesh.ingest.columnar import UploadOptions, conform
from duckmesh.ingest.validation import MAX_KEY_LENGTH, TableValidator
from duckmesh.query.barrier import wait_for_token
from duckmesh.runtime import Runtime

_PARAMS = frozenset(
    {
        "op",
        "event_time_column",
        "key_column",
        "wait_for_visibility",
        "visibility_timeout_ms",
        "delimiter",
        "null_string",
    }
)

_WAIT_PARAMS = frozenset({"wait_for_visibility", "visibility_timeout_ms"})


def is_upload(path: str, content_type: str | None) -> bool:
    """An ingest request whose body the upload path streams itself (any
    non-JSON type: an unsupported one is refused after the body is drained)."""
    if not path.startswith("/v1/ingest/") or not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() != formats.JSON


def _flag(args: Mapping[str, str], name: str) -> bool:
    value = args.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise DuckMeshError("VALIDATION_FAILED", f"{name} must be true or false", field=name)
    return value in ("true", "1")


def _options(args: Mapping[str, str], max_timeout_ms: int) -> tuple[UploadOptions, int | None]:
    unknown = sorted(set(args) - _PARAMS)
    if unknown:
        raise DuckMeshError(
            "VALIDATION_FAILED", f"unknown query parameters {unknown}", field=unknown[0]
        )
    timeout: int | None = None
    if "visibility_timeout_ms" in args:
        raw = args["visibility_timeout_ms"]
        if not raw.isdigit() or int(raw) > max_timeout_ms:
            raise DuckMeshError(
                "VALIDATION_FAILED",
                f"visibility_timeout_ms must be an integer from 0 to {max_timeout_ms}",
                field="visibility_timeout_ms",
            )
        timeout = int(raw)
    if len(args.get("delimiter", ",")) != 1:
        raise DuckMeshError(
            "VALIDATION_FAILED", "delimiter must be one character", field="delimiter"
        )
    opts = UploadOptions(
        op=args.get("op", "insert"),
        event_time_column=args.get("event_time_column") or None,
        key_column=args.get("key_column") or None,
    )
    return opts, timeout


def _idempotency(key: str | None, opts: UploadOptions) -> str | None:
    if (key is None) == (opts.key_column is None):
        raise DuckMeshError(
            "VALIDATION_FAILED",
            "an upload needs exactly one of the Idempotency-Key header and key_column",
            field="Idempotency-Key",
        )
    if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise DuckMeshError(
            "VALIDATION_FAILED",
            f"Idempotency-Key must be 1..{MAX_KEY_LENGTH} characters",
            field="Idempotency-Key",
        )
    return key


def _open_body_limit(request: Any, limit: int) -> None:
    """Let this request's body grow to ``limit`` (Quart fixed the app-wide
    MAX_CONTENT_LENGTH when the request arrived), or refuse it at once by its
    Content-Length, without reading it."""
    body = request.body
    length = request.content_length
    if length is not None and length > limit:
        _drop_rest(request)
        raise formats.too_large(limit)
    body._max_content_length = limit  # Quart has no public per-request setter
    body._must_raise = None


def _drop_rest(request: Any) -> None:
    """Discard whatever of the body still arrives (the error handler waits
    for its end, so the connection stays usable) instead of buffering it."""
    request.body._must_raise = RequestEntityTooLarge()


def _decode(
    body: IO[bytes], encoding: str, kind: str, args: Mapping[str, str], limit: int, in_memory: int
) -> tuple[IO[bytes], bytes]:
    """The decoded body and its content hash (in a worker thread)."""
    decoded = formats.decompress(body, encoding, limit=limit, in_memory=in_memory)
    # What the rows mean, not how they were sent: the same rows with
    # another wait_for_visibility or encoding are the same request.
    shape = [kind, *(args.get(k, "") for k in sorted(_PARAMS - _WAIT_PARAMS))]
    digest = hashlib.sha256("\x00".join(shape).encode())
    while chunk := decoded.read(1 << 20):
        digest.update(chunk)
    decoded.seek(0)
    return decoded, digest.digest()


def _prepare(
    decoded: IO[bytes],
    digest: bytes,
    kind: str,
    args: Mapping[str, str],
    tv: TableValidator,
    opts: UploadOptions,
    key: str | None,
) -> UploadRequest:
    """Parse and cast (in a worker thread)."""
    raw = formats.parse(
        decoded, kind, delimiter=args.get("delimiter", ","), null_string=args.get("null_string", "")
    )
    table = tv.table
    conformed = conform(table, raw, opts)
    return UploadRequest(
        table_id=table.table_id,
        op=opts.op,
        event_time_column=opts.event_time_column,
        schema_version=table.schema_version,
        data=conformed.data,
        content_hash=digest,
        idempotency_key=key,
        row_keys=conformed.row_keys,
        row_hashes=conformed.row_hashes,
    )


async def _publish(
    rt: Runtime,
    tenant: str,
    tv: TableValidator,
    body: IO[bytes],
    parts: tuple[str, str, dict[str, str], UploadOptions, str | None],
    admit: Callable[[int], Awaitable[None]],
) -> UploadReceipt:
    """Decode, answer a known whole-request key at once, else parse, cast and publish."""
    encoding, kind, args, opts, key = parts
    limit, in_memory = rt.config.max_upload_bytes, rt.config.upload_spool_bytes
    decoded, digest = await trio.to_thread.run_sync(
        _decode, body, encoding, kind, args, limit, in_memory
    )
    try:
        if key is not None:
            prior = await trio.to_thread.run_sync(
                rt.bus.upload_receipt,
                tenant,
                tv.table.table_id,
                key,
                digest,
                limiter=rt.db.limiter,
            )
            if prior is not None:
                return prior
        upload = await trio.to_thread.run_sync(_prepare, decoded, digest, kind, args, tv, opts, key)
    finally:
        decoded.close()
    await admit(upload.data.num_rows)
    upload = attrs.evolve(upload, trace_id=tracing.current())
    return await trio.to_thread.run_sync(
        rt.bus.publish_upload, tenant, upload, limiter=rt.db.limiter, abandon_on_cancel=False
    )


def _result(receipt: UploadReceipt) -> dict[str, Any]:
    return {
        "accepted_count": receipt.accepted,
        "duplicate_count": receipt.duplicates,
        "max_visibility_token": receipt.max_token,
        "first_token": receipt.first_token,
        "last_token": receipt.last_token,
        "visible_snapshot_id": None,
        "status": "partial_duplicate" if receipt.duplicates else "accepted",
    }


async def ingest_upload(
    rt: Runtime,
    request: Any,
    tenant: str,
    tv: TableValidator,
    admit: Callable[[int], Awaitable[None]],
) -> dict[str, Any]:
    """Handle one upload; ``admit(rows)`` applies back-pressure, quota and rate limits."""
    started = time.perf_counter()
    kind = formats.media_type(request.headers.get("Content-Type"))
    encoding = formats.content_encoding(request.headers.get("Content-Encoding"))
    args = dict(request.args)
    opts, timeout_ms = _options(args, rt.config.max_consistency_timeout_ms)
    key = _idempotency(request.headers.get("Idempotency-Key"), opts)
    wait = _flag(args, "wait_for_visibility")
    limit, in_memory = rt.config.max_upload_bytes, rt.config.upload_spool_bytes
    _open_body_limit(request, limit)
    body = await formats.spool(request.body, limit=limit, in_memory=in_memory)
    receipt = await _publish(rt, tenant, tv, body, (encoding, kind, args, opts, key), admit)
    if receipt.max_token > rt.ingest.latest_token.get(tenant, 0):
        rt.ingest.latest_token[tenant] = receipt.max_token
    metrics.INGEST_ACK_LATENCY.observe(time.perf_counter() - started)
    metrics.INGEST_RECORDS.inc(receipt.accepted)
    metrics.INGEST_DUPLICATES.inc(receipt.duplicates)
    metrics.INGEST_REQUESTS.labels(status="accepted").inc()
    result = _result(receipt)
    if wait:
        snap = await wait_for_token(
            rt.db,
            rt.bus,
            rt.notifications,
            tenant,
            receipt.max_token,
            rt.queries.consistency_timeout(timeout_ms),
            kind="ingest",
        )
        result["visible_snapshot_id"] = snap.snapshot_id if snap else None
        result["status"] = "visible"
    return result
