"""Per-tenant ingest rate limits (token buckets), checked before any write.

A tenant may ingest ``rate`` records per second on average with bursts of up
to one second's worth. A request that does not fit is refused whole with 429
and a Retry-After, so nothing of it is written. ``rate == 0`` disables the
limit (the default: a self-hosted single team rarely wants one).
"""

from __future__ import annotations

import math
import time

from duckmesh.errors import DuckMeshError


class RateLimiter:
    """Token buckets per tenant; ``code``/``what``/``unit`` word the refusal
    (ingest: RATE_LIMITED in records/s, queries: QUOTA_EXCEEDED in queries/s)."""

    def __init__(
        self, rate: int, *, code: str = "RATE_LIMITED", what: str = "ingest", unit: str = "records"
    ) -> None:
        self.rate = rate
        self.code = code
        self.what = what
        self.unit = unit
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)

    def take(self, tenant: str, records: int, now: float | None = None) -> None:
        """Spend ``records`` from the tenant's bucket or raise RATE_LIMITED."""
        if self.rate <= 0:
            return
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.get(tenant, (float(self.rate), now))
        tokens = min(float(self.rate), tokens + (now - at) * self.rate)
        if records > tokens:
            wait = (records - tokens) / self.rate
            self._buckets[tenant] = (tokens, now)
            raise DuckMeshError(
                self.code,
                f"tenant {self.what} limit is {self.rate} {self.unit}/s; retry in {wait:.2f} s",
                **{f"limit_{self.unit}_per_s": self.rate},
                retry_after_s=max(1, math.ceil(wait)),
            )
        self._buckets[tenant] = (tokens - records, now)
