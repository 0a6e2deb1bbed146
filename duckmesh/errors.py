"""The one error type that crosses layers, and the stable error codes.

Every failure a client can see is a ``DuckMeshError`` with an ``error_code``
from this module; the API turns it into the spec's error body
``{error_code, message, retryable, context, trace_id}``.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

# Every code a client can see; a typo in ``DuckMeshError("...")`` is a mypy error.
ErrorCode = Literal[
    "BAD_REQUEST",
    "VALIDATION_FAILED",
    "SQL_REJECTED",
    "SQL_ERROR",
    "VISIBILITY_TOKEN_INVALID",
    "TOKEN_SCOPE_MISMATCH",
    "SCHEMA_INCOMPATIBLE",
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "NOT_ACCEPTABLE",
    "TABLE_NOT_FOUND",
    "SNAPSHOT_NOT_FOUND",
    "NOT_FOUND",
    "TABLE_EXISTS",
    "TENANT_EXISTS",
    "IDEMPOTENCY_CONFLICT",
    "CONCURRENCY_CONFLICT",
    "PAYLOAD_TOO_LARGE",
    "RATE_LIMITED",
    "QUOTA_EXCEEDED",
    "QUERY_TIMEOUT",
    "QUERY_MEMORY_EXCEEDED",
    "INTERNAL",
    "NOT_READY",
    "OVERLOADED",
    "CONSISTENCY_TIMEOUT",
    "INTEGRITY_CHECK_FAILED",
    "UNSUPPORTED_MEDIA_TYPE",
    "OBJECT_STORE_UNAVAILABLE",
    "DATA_FILE_CORRUPT",
    "SHUTTING_DOWN",
    "DISK_LOW",
    "NOT_CONFIGURED",
    "UPSTREAM_FAILED",
    "SNAPSHOT_EXPIRED",
]

# code -> (HTTP status, retryable)
ERROR_CODES: dict[ErrorCode, tuple[int, bool]] = {
    "BAD_REQUEST": (400, False),
    "VALIDATION_FAILED": (400, False),
    "SQL_REJECTED": (400, False),
    "SQL_ERROR": (400, False),
    "VISIBILITY_TOKEN_INVALID": (400, False),
    "TOKEN_SCOPE_MISMATCH": (400, False),
    "SCHEMA_INCOMPATIBLE": (400, False),
    "UNAUTHENTICATED": (401, False),
    "FORBIDDEN": (403, False),
    "NOT_ACCEPTABLE": (406, False),
    "TABLE_NOT_FOUND": (404, False),
    "SNAPSHOT_NOT_FOUND": (404, False),
    "NOT_FOUND": (404, False),
    "TABLE_EXISTS": (409, False),
    "TENANT_EXISTS": (409, False),
    "IDEMPOTENCY_CONFLICT": (409, False),
    "CONCURRENCY_CONFLICT": (409, True),
    "PAYLOAD_TOO_LARGE": (413, False),
    "UNSUPPORTED_MEDIA_TYPE": (415, False),
    "RATE_LIMITED": (429, True),
    "QUOTA_EXCEEDED": (429, True),
    "QUERY_TIMEOUT": (400, False),
    "QUERY_MEMORY_EXCEEDED": (400, False),
    "INTERNAL": (500, True),
    "NOT_READY": (503, True),
    "OVERLOADED": (503, True),
    "CONSISTENCY_TIMEOUT": (504, True),
    "INTEGRITY_CHECK_FAILED": (500, False),
    "OBJECT_STORE_UNAVAILABLE": (503, True),
    # A stored file of the queried table cannot be read: retrying will not help.
    "DATA_FILE_CORRUPT": (500, False),
    # The server is stopping (ADR 0017): retry on another node or after the restart.
    "SHUTTING_DOWN": (503, True),
    # Free disk below DUCKMESH_MIN_FREE_DISK_BYTES: ingest waits until space is freed.
    "DISK_LOW": (507, True),
    "NOT_CONFIGURED": (404, False),
    "UPSTREAM_FAILED": (502, True),
    "SNAPSHOT_EXPIRED": (410, False),
}
if set(ERROR_CODES) != set(get_args(ErrorCode)):  # pragma: no cover - caught at import
    raise RuntimeError("ERROR_CODES and ErrorCode list different codes")


class DuckMeshError(Exception):
    """A failure with a stable, documented ``error_code``."""

    def __init__(self, error_code: ErrorCode, message: str, **context: Any) -> None:
        if error_code not in ERROR_CODES:
            raise ValueError(f"unknown error code {error_code!r}")
        super().__init__(message)
        self.error_code = error_code
        self.message = message
        self.context = context

    @property
    def http_status(self) -> int:
        return ERROR_CODES[self.error_code][0]

    @property
    def retryable(self) -> bool:
        return ERROR_CODES[self.error_code][1]

    def body(self, trace_id: str | None) -> dict[str, Any]:
        return {
            "error_code": self.error_code,
            "message": self.message,
            "retryable": self.retryable,
            "context": self.context,
            "trace_id": trace_id,
        }
