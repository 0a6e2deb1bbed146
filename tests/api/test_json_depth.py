"""The nesting bound of request bodies, at its edge (``api.http.parse_json``)."""

from __future__ import annotations

import json

import pytest

from duckmesh.api.http import MAX_JSON_DEPTH, parse_json
from duckmesh.errors import DuckMeshError


def nested(depth: int) -> str:
    """A body of ``depth`` levels (the object itself is level 1), wide at every level."""
    inner = "[]"
    for _ in range(depth - 3):
        inner = f"[1, {{}}, {inner}, []]"
    return json.dumps({"records": [{"a": 1}] * 50}).replace("]}", f", {inner}]}}")


def test_a_body_as_deep_as_the_bound_is_parsed() -> None:
    assert parse_json(nested(MAX_JSON_DEPTH))["records"][0] == {"a": 1}


def test_one_level_deeper_is_refused() -> None:
    with pytest.raises(DuckMeshError) as refused:
        parse_json(nested(MAX_JSON_DEPTH + 1))
    assert refused.value.error_code == "BAD_REQUEST"
    assert refused.value.context == {"max_depth": MAX_JSON_DEPTH}
