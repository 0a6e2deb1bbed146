"""Which tenants' commits are failing in this process, for readiness and back-off.

Every committer of a process shares one ``CommitHealth``. A commit that still
fails after bisecting marks its tenant failing (since when, how many times in a
row, the error's class — never its text, which may quote payload values); the
tenant's next successful commit clears it. ``GET /v1/ready`` lists the failing
tenants and the committer derives the tenant's back-off from the count.
"""

from __future__ import annotations

import datetime as dt
import threading

import attrs

from duckmesh import metrics


@attrs.frozen
class TenantFailure:
    tenant_id: str
    since: dt.datetime
    failures: int  # consecutive failed commit attempts
    error: str  # the exception's class name

    def as_dict(self) -> dict[str, object]:
        return {
            "tenant_id": self.tenant_id,
            "failing_since": self.since.isoformat(),
            "failures": self.failures,
            "error": self.error,
        }


class CommitHealth:
    """Thread-safe: committers run in worker threads, the API reads it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failing: dict[str, TenantFailure] = {}

    def failed(self, tenant_id: str, error: str) -> int:
        """Note one more failed attempt; returns the consecutive count."""
        with self._lock:
            prior = self._failing.get(tenant_id)
            since = prior.since if prior else dt.datetime.now(dt.UTC)
            count = prior.failures + 1 if prior else 1
            self._failing[tenant_id] = TenantFailure(tenant_id, since, count, error)
            metrics.FAILING_TENANTS.set(len(self._failing))
        metrics.TENANT_COMMIT_FAILURES.labels(tenant=tenant_id).inc()
        return count

    def succeeded(self, tenant_id: str) -> None:
        with self._lock:
            if self._failing.pop(tenant_id, None) is not None:
                metrics.FAILING_TENANTS.set(len(self._failing))

    def failing(self) -> list[TenantFailure]:
        with self._lock:
            return sorted(self._failing.values(), key=lambda f: f.tenant_id)
