"""Typed exceptions of the client, one per server ``error_code``.

Every error body the server sends (``{error_code, message, retryable,
context, trace_id}``) is raised as the subclass of ``ApiError`` named after
its code (``TABLE_NOT_FOUND`` -> ``TableNotFound``), so callers catch what
they handle. A code this client does not know yet is raised as ``ApiError``
itself. Failures to reach the server at all are ``ConnectionFailed``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "ClientError", "ConnectionFailed", "error_class"]


class ClientError(Exception):
    """Anything the client raises."""


class ConnectionFailed(ClientError):
    """The server could not be reached (after the retries)."""


class ApiError(ClientError):
    """An error body from the server."""

    error_code = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        error_code: str | None = None,
        status: int = 0,
        retryable: bool = False,
        context: dict[str, Any] | None = None,
        trace_id: str | None = None,
    ) -> None:
        super().__init__(message)
        if error_code is not None:
            self.error_code = error_code
        self.message = message
        self.status = status
        self.retryable = retryable
        self.context = context or {}
        self.trace_id = trace_id

    def __str__(self) -> str:
        return f"{self.error_code}: {self.message}"


class BadRequest(ApiError):
    error_code = "BAD_REQUEST"


class ValidationFailed(ApiError):
    error_code = "VALIDATION_FAILED"


class SqlRejected(ApiError):
    error_code = "SQL_REJECTED"


class SqlError(ApiError):
    error_code = "SQL_ERROR"


class VisibilityTokenInvalid(ApiError):
    error_code = "VISIBILITY_TOKEN_INVALID"


class TokenScopeMismatch(ApiError):
    error_code = "TOKEN_SCOPE_MISMATCH"


class SchemaIncompatible(ApiError):
    error_code = "SCHEMA_INCOMPATIBLE"


class Unauthenticated(ApiError):
    error_code = "UNAUTHENTICATED"


class Forbidden(ApiError):
    error_code = "FORBIDDEN"


class NotAcceptable(ApiError):
    error_code = "NOT_ACCEPTABLE"


class TableNotFound(ApiError):
    error_code = "TABLE_NOT_FOUND"


class SnapshotNotFound(ApiError):
    error_code = "SNAPSHOT_NOT_FOUND"


class SnapshotExpired(ApiError):
    error_code = "SNAPSHOT_EXPIRED"


class NotFound(ApiError):
    error_code = "NOT_FOUND"


class NotConfigured(ApiError):
    error_code = "NOT_CONFIGURED"


class TableExists(ApiError):
    error_code = "TABLE_EXISTS"


class TenantExists(ApiError):
    error_code = "TENANT_EXISTS"


class IdempotencyConflict(ApiError):
    error_code = "IDEMPOTENCY_CONFLICT"


class ConcurrencyConflict(ApiError):
    error_code = "CONCURRENCY_CONFLICT"


class PayloadTooLarge(ApiError):
    error_code = "PAYLOAD_TOO_LARGE"


class UnsupportedMediaType(ApiError):
    error_code = "UNSUPPORTED_MEDIA_TYPE"


class RateLimited(ApiError):
    error_code = "RATE_LIMITED"


class QuotaExceeded(ApiError):
    error_code = "QUOTA_EXCEEDED"


class QueryTimeout(ApiError):
    error_code = "QUERY_TIMEOUT"


class QueryMemoryExceeded(ApiError):
    error_code = "QUERY_MEMORY_EXCEEDED"


class Internal(ApiError):
    error_code = "INTERNAL"


class UpstreamFailed(ApiError):
    error_code = "UPSTREAM_FAILED"


class NotReady(ApiError):
    error_code = "NOT_READY"


class Overloaded(ApiError):
    error_code = "OVERLOADED"


class ConsistencyTimeout(ApiError):
    error_code = "CONSISTENCY_TIMEOUT"


class IntegrityCheckFailed(ApiError):
    error_code = "INTEGRITY_CHECK_FAILED"


class DataFileCorrupt(ApiError):
    error_code = "DATA_FILE_CORRUPT"


class ObjectStoreUnavailable(ApiError):
    error_code = "OBJECT_STORE_UNAVAILABLE"


class ShuttingDown(ApiError):
    error_code = "SHUTTING_DOWN"


class DiskLow(ApiError):
    error_code = "DISK_LOW"


ERROR_CLASSES: dict[str, type[ApiError]] = {
    cls.error_code: cls for cls in ApiError.__subclasses__() if cls.error_code != "UNKNOWN"
}
__all__ += [cls.__name__ for cls in ERROR_CLASSES.values()]


def error_class(error_code: str) -> type[ApiError]:
    """The exception class of ``error_code`` (``ApiError`` for an unknown code)."""
    return ERROR_CLASSES.get(error_code, ApiError)
