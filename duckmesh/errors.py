"""The one error type that crosses layers, and the stable error codes.

Every failure a client can see is a ``DuckMeshError`` with an ``error_code``
from this module; the API turns it into the spec's error body
``{error_code, message, retryable, context, trace_id}``.
"""

from __future__ import annotations

from typing import Any

# code -> (HTTP status, retryable)
ERROR_CODES: dict[str, tuple[int, bool]] = {
    "BAD_REQUEST": (400, False),
    "VALIDATION_FAILED": (400, False),
    "SQL_REJECTED": (400, False),
    "SQL_ERROR": (400, False),
    "VISIBILITY_TOKEN_INVALID": (400, False),
    "TOKEN_SCOPE_MISMATCH": (400, False),
    "SCHEMA_INCOMPATIBLE": (400, False),
    "UNAUTHENTICATED": (401, False),
    "FORBIDDEN": (403, False),
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
}


class DuckMeshError(Exception):
    """A failure with a stable, documented ``error_code``."""

    def __init__(self, error_code: str, message: str, **context: Any) -> None:
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
