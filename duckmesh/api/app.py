"""The composition root of the HTTP API: one Quart-Trio app from a runtime.

``create_app`` builds the ``ApiContext`` (runtime, caches, limiters,
maintenance jobs), installs the request hooks and error handlers, and
registers the route blueprints of ``api.routes`` (module map in
docs/ARCHITECTURE.md). Every error leaves through ``http.error_response``.
"""

from __future__ import annotations

import time

from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from duckmesh import metrics
from duckmesh.api.context import ApiContext, api
from duckmesh.api.http import error_response, log, receive_body, start_trace
from duckmesh.api.openapi import load_openapi
from duckmesh.api.routes import (
    audit,
    changes,
    console,
    health,
    ingest,
    lag,
    maintenance,
    query,
    snapshots,
    tables,
    translate,
)
from duckmesh.errors import DuckMeshError, ErrorCode
from duckmesh.ingest.upload import is_upload
from duckmesh.runtime import Runtime

__all__ = ["create_app", "load_openapi"]

_HTTP_CODES: dict[int, ErrorCode] = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "BAD_REQUEST",
    413: "PAYLOAD_TOO_LARGE",
    429: "RATE_LIMITED",
    503: "NOT_READY",
}
# Coordinator and maintenance processes serve only health, readiness, metrics
# and the document, so every process of a split deployment can be scraped.
_EVERY_ROLE = (health.bp,)
_API_ROLES = ("all", "api")
# The web console (api/console/) talks to the API: served where the API is.
_API_ONLY = (
    tables.bp,
    ingest.bp,
    query.bp,
    snapshots.bp,
    maintenance.bp,
    audit.bp,
    lag.bp,
    console.bp,
    translate.bp,
    changes.bp,
)


def create_app(rt: Runtime) -> QuartTrio:
    app = QuartTrio("duckmesh")
    app.config["MAX_CONTENT_LENGTH"] = rt.config.max_request_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    ApiContext.build(rt).install(app)
    app.before_request(_before)
    app.after_request(_after)
    app.register_error_handler(DuckMeshError, _duckmesh_error)
    app.register_error_handler(RecursionError, _too_deep)
    app.register_error_handler(HTTPException, _http_error)
    serves_api = rt.config.role in _API_ROLES
    for blueprint in _EVERY_ROLE + (_API_ONLY if serves_api else ()):
        app.register_blueprint(blueprint)
    return app


async def _before() -> Response | None:
    g.started = time.perf_counter()  # what a route reports as the request's duration
    start_trace()
    if not is_upload(request.path, request.headers.get("Content-Type")):
        await receive_body()  # an upload streams its own body (ingest/upload.py)
    if api().rt.shutdown.refuses(request.path):
        # After a stop signal (duckmesh.shutdown): an answer, never a hang.
        return error_response(
            DuckMeshError("SHUTTING_DOWN", "the server is shutting down; retry elsewhere")
        )
    return None


async def _after(response: Response) -> Response:
    if api().rt.shutdown.signalled:
        # The connection is not kept for a next request this process will refuse.
        response.headers["Connection"] = "close"
    return response


async def _duckmesh_error(exc: DuckMeshError) -> Response:
    if request.path.startswith("/v1/ingest/"):
        # Refused ingest requests (validation, 409, 429, ...) are counted too.
        metrics.INGEST_REQUESTS.labels(status=exc.error_code).inc()
        await receive_body()  # an upload refused before its body was read
    return error_response(exc)


async def _too_deep(exc: RecursionError) -> Response:
    # Only a hostile input nests deep enough to exhaust the stack (request
    # JSON and type names have their own bounds): the client's fault, not a 500.
    log.warning("recursion limit reached", path=request.path, exc_info=exc)
    return error_response(
        DuckMeshError("BAD_REQUEST", "the request is nested too deeply to process")
    )


async def _http_error(exc: HTTPException) -> Response:
    code = _code_for_status(exc.code or 500)
    # A 500 wraps an unexpected exception: its text stays in the server log.
    message = "internal error" if code == "INTERNAL" else exc.description or exc.name
    context: dict[str, object] = {}
    if exc.code in (404, 405):
        # Routing misses say what was asked, not the framework's generic text.
        context = {"method": request.method, "path": request.path}
        message = f"no route {request.method} {request.path}"
        allowed = sorted(set(getattr(exc, "valid_methods", None) or ()) - {"HEAD", "OPTIONS"})
        if exc.code == 405 and allowed:
            message = f"{request.method} is not allowed on {request.path}"
            context["allowed_methods"] = allowed
    return error_response(DuckMeshError(code, message, **context))


def _code_for_status(status: int) -> ErrorCode:
    """The error code of a Werkzeug/Quart HTTP error (unexpected exceptions
    arrive as a 500: never reported as the client's fault)."""
    return _HTTP_CODES.get(status, "INTERNAL" if status >= 500 else "BAD_REQUEST")
