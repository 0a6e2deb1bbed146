"""The OpenAPI document (SPEC §4), read from the package once per process.

``GET /v1/openapi.json`` serves the compact encoding built on first use;
``load_openapi`` gives callers (tests, tools) their own parsed copy.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from duckmesh.api.http import encode_json


@functools.cache
def _document_text() -> str:
    return resources.files("duckmesh.api").joinpath("openapi.json").read_text()


def load_openapi() -> dict[str, Any]:
    """A fresh parse of the document: the caller may change it freely."""
    doc: dict[str, Any] = json.loads(_document_text())
    return doc


@functools.cache
def openapi_body() -> str:
    """The document as the route serves it (same encoding as every JSON response)."""
    return encode_json(load_openapi())
