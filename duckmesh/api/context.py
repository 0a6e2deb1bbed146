"""What the routes share: one ``ApiContext`` per app, and the role check.

``create_app`` builds the context from the runtime and keeps it in
``app.extensions``; a route reaches it with ``api()``. Nothing here is a
closure over ``create_app``'s locals, so each route module stands alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import attrs
from quart import Quart, Response, current_app

from duckmesh.api.http import Authenticator, Principal, current_trace_id
from duckmesh.api.validators import TableValidators
from duckmesh.db import Conn
from duckmesh.errors import DuckMeshError
from duckmesh.events import acting_as, call_retrying
from duckmesh.ingest.backlog import Backlog
from duckmesh.ingest.limits import RateLimiter, StorageQuota
from duckmesh.maintenance.actors import collector_for, compactor_for
from duckmesh.maintenance.compaction import Compactor
from duckmesh.maintenance.gc import Collector
from duckmesh.maintenance.integrity import IntegrityChecker
from duckmesh.runtime import Runtime

_EXTENSION = "duckmesh"
T = TypeVar("T")
Handler = Callable[..., Awaitable[Response]]


@attrs.frozen
class ApiContext:
    """The runtime plus the API's own long-lived parts (caches, limiters, jobs)."""

    rt: Runtime
    auth: Authenticator
    validators: TableValidators
    rate_limiter: RateLimiter
    storage_quota: StorageQuota
    backlog: Backlog
    compactor: Compactor
    collector: Collector
    integrity: IntegrityChecker

    @classmethod
    def build(cls, rt: Runtime) -> ApiContext:
        auth = Authenticator(rt.db)
        validators = TableValidators(rt.db)
        # Keys and table schemas change by catalog events: drop what they cached.
        rt.notifications.on_event(auth.invalidate)
        rt.notifications.on_event(validators.on_event)
        quota = StorageQuota(
            rt.db,
            rt.config.tenant_storage_quota_bytes,
            lambda tenant: rt.notifications.watermarks.get(tenant, (None, 0))[0],
        )
        return cls(
            rt=rt,
            auth=auth,
            validators=validators,
            rate_limiter=RateLimiter(rt.config.ingest_rate_limit, shared_dir=rt.group_dir),
            storage_quota=quota,
            backlog=Backlog(
                rt.bus,
                rt.config.max_pending_records,
                own_latest=lambda tenant: rt.ingest.latest_token.get(tenant, 0),
                notified_watermark=lambda t: rt.notifications.watermarks.get(t, (0, 0))[1],
                db=rt.db,
            ),
            compactor=compactor_for(rt),
            collector=collector_for(rt),
            integrity=IntegrityChecker(rt.db, rt.store),
        )

    def install(self, app: Quart) -> None:
        app.extensions[_EXTENSION] = self

    async def run_command(self, p: Principal, fn: Callable[[Conn], T]) -> T:
        """Run a catalog command as ``p`` (audit trail), again when a commit
        published first."""
        with acting(p):
            return await self.rt.db.in_thread(call_retrying, self.rt.db, fn)


def api() -> ApiContext:
    """The context of the app serving the current request."""
    ctx: ApiContext = current_app.extensions[_EXTENSION]
    return ctx


def acting(p: Principal) -> AbstractContextManager[None]:
    """Every event this request causes names its key and trace (audit trail)."""
    return acting_as(actor_key_id=p.key_id, trace_id=current_trace_id())


def require(*roles: str) -> Callable[[Handler], Handler]:
    """Route decorator: authenticate, then allow only holders of one of ``roles``."""

    def wrap(fn: Handler) -> Handler:
        async def handler(**kwargs: Any) -> Response:
            principal = await api().auth.principal()
            if not principal.roles & set(roles):
                raise DuckMeshError(
                    "FORBIDDEN",
                    f"this key lacks the role for this operation (needs one of {list(roles)})",
                    required_roles=list(roles),
                )
            return await fn(principal, **kwargs)

        handler.__name__ = fn.__name__
        return handler

    return wrap
