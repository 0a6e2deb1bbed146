"""The web console: static files shipped in the package (``api/console/``),
served at ``/ui/``; ``GET /`` redirects there.

Plain HTML, CSS and JavaScript (no build step, no CDN): the page talks to the
documented API with the key the user pastes (kept in the browser's
sessionStorage). The files need no key; every API call they make does. A
strict Content-Security-Policy allows only this origin's own files.
"""

from __future__ import annotations

from importlib import resources

from quart import Blueprint, Response

from duckmesh.errors import DuckMeshError

bp = Blueprint("console", __name__)

_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
        " img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _load_files() -> dict[str, tuple[bytes, str]]:
    """Every console file by name, read once (the set of names is fixed: no paths)."""
    root = resources.files("duckmesh.api") / "console"
    files = {}
    for entry in root.iterdir():
        suffix = entry.name[entry.name.rfind(".") :]
        if entry.is_file() and suffix in _TYPES:
            files[entry.name] = (entry.read_bytes(), f"{_TYPES[suffix]}; charset=utf-8")
    return files


_FILES = _load_files()


@bp.get("/")
async def root() -> Response:
    return Response("", status=302, headers={"Location": "/ui/"}, content_type="text/html")


@bp.get("/ui/")
async def console_index() -> Response:
    return _file("index.html")


@bp.get("/ui/<name>")
async def console_file(name: str) -> Response:
    return _file(name)


def _file(name: str) -> Response:
    found = _FILES.get(name)
    if found is None:
        raise DuckMeshError("NOT_FOUND", f"no console file {name!r}", name=name)
    body, content_type = found
    return Response(body, content_type=content_type, headers=_HEADERS)
