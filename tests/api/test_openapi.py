"""The OpenAPI document matches the running app (SPEC §4: "a test proves it").

- every route of ``create_app`` is in the document and nothing else is
  (path + method), with the same path parameters;
- ``x-required-roles`` and ``security`` are what the app enforces (each
  operation is called with a key of each single role, and with none);
- real responses validate against the document's response schemas. With
  ``jsonschema`` importable it does the validating; otherwise a small
  validator below does, for exactly the keywords the document uses (a test
  fails if the document starts using one it does not know).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import duckmesh.api.openapi
from duckmesh.api.app import create_app
from duckmesh.api.openapi import load_openapi
from duckmesh.catalog.model import ROLES
from duckmesh.errors import ERROR_CODES
from duckmesh.runtime import Runtime
from tests.api.helpers import assert_error, bearer, issue_key
from tests.fixtures import REPO, LiveServer

try:
    import jsonschema
except ImportError:  # not a declared dependency: fall back to the validator below
    jsonschema = None

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
_CONVERTER = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")


def _app_routes(rt: Runtime) -> set[tuple[str, str]]:
    app = create_app(rt)
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = _CONVERTER.sub(r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            routes.add((path, method.lower()))
    return routes


def _doc_operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


# -- a minimal JSON Schema (2020-12 subset) validator ----------------------------

VALIDATION_KEYWORDS = {
    "$ref",
    "type",
    "enum",
    "const",
    "required",
    "properties",
    "additionalProperties",
    "minProperties",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
}
ANNOTATIONS = {"description", "default", "format", "title", "examples"}
_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) in (int, float),
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
}


def _resolve(root: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _errors(schema: dict[str, Any], value: Any, root: dict[str, Any], at: str) -> list[str]:
    out: list[str] = []
    if "$ref" in schema:
        out += _errors(_resolve(root, schema["$ref"]), value, root, at)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](value) for t in types):
            return [*out, f"{at}: {value!r} is not of type {types}"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{at}: {value!r} not in {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        out.append(f"{at}: {value!r} != {schema['const']!r}")
    if isinstance(value, dict):
        out += [f"{at}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        if len(value) < schema.get("minProperties", 0):
            out.append(f"{at}: fewer than {schema['minProperties']} properties")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                out += _errors(props[k], v, root, f"{at}.{k}")
            elif extra is False:
                out.append(f"{at}: unexpected property {k!r}")
            elif isinstance(extra, dict):
                out += _errors(extra, v, root, f"{at}.{k}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            out.append(f"{at}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            out.append(f"{at}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, v in enumerate(value):
                out += _errors(schema["items"], v, root, f"{at}[{i}]")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            out.append(f"{at}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            out.append(f"{at}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append(f"{at}: {value!r} does not match {schema['pattern']!r}")
    if type(value) in (int, float):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{at}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{at}: {value} > {schema['maximum']}")
    for sub in schema.get("allOf", []):
        out += _errors(sub, value, root, at)
    if "anyOf" in schema and all(_errors(s, value, root, at) for s in schema["anyOf"]):
        out.append(f"{at}: {value!r} matches none of anyOf")
    if "oneOf" in schema:
        matched = sum(not _errors(s, value, root, at) for s in schema["oneOf"])
        if matched != 1:
            out.append(f"{at}: {value!r} matches {matched} of oneOf")
    if "not" in schema and not _errors(schema["not"], value, root, at):
        out.append(f"{at}: {value!r} matches a `not` schema")
    return out


def validate(doc: dict[str, Any], schema: dict[str, Any], value: Any) -> None:
    if jsonschema is not None:
        validator = jsonschema.Draft202012Validator({**schema, "components": doc["components"]})
        problems = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(value)]
    else:
        problems = _errors(schema, value, doc, "$")
    assert not problems, f"{problems}\n{json.dumps(value, indent=1)[:3000]}"


def _subschemas(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield schema
    children: list[Any] = list(schema.get("properties", {}).values())
    children += schema.get("anyOf", []) + schema.get("oneOf", []) + schema.get("allOf", [])
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            children.append(schema[key])
    for child in children:
        yield from _subschemas(child)


def _all_schemas(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    def walk(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "schema" and isinstance(value, dict):
                    yield from _subschemas(value)
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    for schema in doc["components"]["schemas"].values():
        yield from _subschemas(schema)
    yield from walk(doc["paths"])
    yield from walk(doc["components"]["responses"])


def response_schema(
    doc: dict[str, Any], path: str, method: str, r: httpx.Response
) -> dict[str, Any]:
    responses = doc["paths"][path][method]["responses"]
    assert str(r.status_code) in responses, (
        f"{method.upper()} {path} answered {r.status_code}, not documented: {r.text[:500]}"
    )
    response = responses[str(r.status_code)]
    if "$ref" in response:
        response = _resolve(doc, response["$ref"])
    media = r.headers["content-type"].split(";")[0].strip()
    assert media in response["content"], (path, method, r.status_code, media)
    schema: dict[str, Any] = response["content"][media]["schema"]
    return schema


def check_response(doc: dict[str, Any], path: str, method: str, r: httpx.Response) -> None:
    schema = response_schema(doc, path, method, r)
    value = r.json() if r.headers["content-type"].startswith("application/json") else r.text
    validate(doc, schema, value)


# -- the document itself ---------------------------------------------------------


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return load_openapi()


def test_document_is_openapi_31(doc: dict[str, Any]) -> None:
    path = REPO / "duckmesh" / "api" / "openapi.json"
    assert json.loads(path.read_text()) == doc
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["title"]
    assert doc["info"]["version"]
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyHeader"] == {
        **schemes["apiKeyHeader"],
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }
    assert doc["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}]
    ids = [op["operationId"] for _, _, op in _doc_operations(doc)]
    assert len(ids) == len(set(ids)), ids


def test_error_schema_lists_every_error_code(doc: dict[str, Any]) -> None:
    error = doc["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"error_code", "message", "retryable", "context", "trace_id"}
    assert sorted(error["properties"]["error_code"]["enum"]) == sorted(ERROR_CODES)


def test_every_ref_resolves_and_every_keyword_is_known(doc: dict[str, Any]) -> None:
    refs = re.findall(r'"\$ref": "([^"]+)"', json.dumps(doc))
    assert refs
    for ref in refs:
        assert isinstance(_resolve(doc, ref), dict), ref
    for schema in _all_schemas(doc):
        unknown = set(schema) - VALIDATION_KEYWORDS - ANNOTATIONS
        assert not unknown, f"keywords the fallback validator would ignore: {unknown}"
        if jsonschema is not None:
            jsonschema.Draft202012Validator.check_schema(schema)


def test_every_operation_documents_its_errors(doc: dict[str, Any]) -> None:
    for path, method, op in _doc_operations(doc):
        responses = op["responses"]
        # A success, or for a redirect-only route (`GET /` to the console) its 302.
        assert any(code.startswith("2") or code == "302" for code in responses), (path, method)
        assert "500" in responses, (path, method)
        if op.get("security") == []:
            assert "x-required-roles" not in op, (path, method)
        else:
            roles = op["x-required-roles"]
            assert roles, (path, method)
            assert set(roles) <= set(ROLES), (path, method, roles)
            assert {"401", "403"} <= set(responses), (path, method)
            assert all(role in op["description"] for role in roles), (path, method)
        if "requestBody" in op:
            assert {"400", "413"} <= set(responses), (path, method)
            assert "application/json" in op["requestBody"]["content"]
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"{([^}]+)}", path)), (path, method)
        for p in op.get("parameters", []):
            if p["in"] == "path":
                assert p["required"] is True, (path, method, p)


# -- document vs app -------------------------------------------------------------


def test_routes_match_the_app(doc: dict[str, Any], runtime: Runtime) -> None:
    app_routes = _app_routes(runtime)
    doc_routes = {(path, method) for path, method, _ in _doc_operations(doc)}
    assert app_routes, "no routes found in the app"
    missing = app_routes - doc_routes
    assert not missing, f"routes missing from openapi.json: {missing}"
    assert not doc_routes - app_routes, f"documented but not served: {doc_routes - app_routes}"


def test_route_diff_catches_a_missing_route(doc: dict[str, Any], runtime: Runtime) -> None:
    """The comparison is not vacuous: converters are normalised, a gap shows."""
    routes = _app_routes(runtime)
    assert ("/v1/snapshots/{snapshot_id}", "get") in routes
    assert ("/v1/tables/{name}", "patch") in routes
    smaller = dict(doc["paths"])
    del smaller["/v1/lag"]
    doc_routes = {(p, m) for p, m, _ in _doc_operations({"paths": smaller})}
    assert routes - doc_routes == {("/v1/lag", "get")}


def _example_url(path: str) -> str:
    return (
        path.replace("{name}", "nope").replace("{table}", "nope").replace("{snapshot_id}", "999999")
    )


async def test_required_roles_and_security_are_enforced(
    doc: dict[str, Any], server: LiveServer
) -> None:
    """Each operation with a key of each single role: 403 exactly when the
    document says the role is not enough; no key: 401 unless ``security: []``."""
    keys = {role: (await issue_key(server.rt, "default", [role]))[1] for role in ROLES}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as anon:
        for path, method, op in _doc_operations(doc):
            url = _example_url(path)
            body: dict[str, Any] = {"json": {}} if "requestBody" in op else {}
            r = await anon.request(method.upper(), url, **body)
            if op.get("security") == []:
                assert r.status_code not in (401, 403), (path, method, r.text)
                check_response(doc, path, method, r)
                continue
            assert_error(r, 401, "UNAUTHENTICATED")
            check_response(doc, path, method, r)
            required = set(op["x-required-roles"])
            for role, key in keys.items():
                r = await anon.request(method.upper(), url, headers=bearer(key), **body)
                if role in required:
                    assert r.status_code not in (401, 403), (path, method, role, r.text)
                else:
                    err = assert_error(r, 403, "FORBIDDEN")
                    assert set(err["context"]["required_roles"]) == required, (path, method)
                check_response(doc, path, method, r)


# -- real responses against the schemas -----------------------------------------


async def test_real_responses_match_the_schemas(doc: dict[str, Any], server: LiveServer) -> None:
    c = server.client

    r = await c.post(
        "/v1/tables",
        json={
            "name": "orders",
            "columns": [
                {"name": "order_id", "type": "BIGINT", "nullable": False},
                {"name": "status", "type": "VARCHAR"},
                {"name": "amount", "type": "decimal(10, 2)"},
                {"name": "tags", "type": "VARCHAR[]"},
            ],
            "primary_key": ["order_id"],
            "partition_by": {"event_time": "day"},
            "retention": {"max_age_days": 30},
        },
    )
    assert r.status_code == 201, r.text
    check_response(doc, "/v1/tables", "post", r)
    r = await c.post(
        "/v1/tables", json={"name": "orders", "columns": [{"name": "a", "type": "INTEGER"}]}
    )
    assert_error(r, 409, "TABLE_EXISTS")
    check_response(doc, "/v1/tables", "post", r)

    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("get", "/v1/tables", {}),
        ("get", "/v1/tables/orders", {}),
        (
            "patch",
            "/v1/tables/orders",
            {"json": {"add_columns": [{"name": "note", "type": "VARCHAR"}]}},
        ),
        ("get", "/v1/tables/nope", {}),
        (
            "patch",
            "/v1/tables/orders",
            {"json": {"widen_columns": [{"name": "status", "type": "BIGINT"}]}},
        ),
    ]
    for method, path, kwargs in calls:
        r = await c.request(method.upper(), path, **kwargs)
        check_response(doc, path.replace("orders", "{name}").replace("nope", "{name}"), method, r)

    r = await server.ingest(
        "orders",
        [
            {
                "idempotency_key": "k1",
                "op": "upsert",
                "event_time": "2026-01-01T00:00:00Z",
                "payload": {"order_id": 1, "status": "new", "amount": "9.50", "tags": ["a"]},
            }
        ],
        wait_for_visibility=True,
        visibility_timeout_ms=10_000,
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "visible"
    check_response(doc, "/v1/ingest/{table}", "post", r)
    token = r.json()["max_visibility_token"]
    r = await server.ingest(
        "orders",
        [{"idempotency_key": "k1", "op": "upsert", "payload": {"order_id": 1, "status": "new"}}],
    )
    assert_error(r, 409, "IDEMPOTENCY_CONFLICT")
    check_response(doc, "/v1/ingest/{table}", "post", r)
    r = await server.ingest("orders", [{"idempotency_key": "bad", "payload": {"nope": 1}}])
    body = assert_error(r, 400, "VALIDATION_FAILED")
    assert body["context"]["errors"][0]["field"] == "payload.nope"
    check_response(doc, "/v1/ingest/{table}", "post", r)
    r = await server.ingest("missing", [{"idempotency_key": "x", "payload": {}}])
    assert_error(r, 404, "TABLE_NOT_FOUND")
    check_response(doc, "/v1/ingest/{table}", "post", r)

    r = await server.query(
        "select order_id, status, amount, tags from orders", min_visibility_token=token
    )
    assert r.status_code == 200, r.text
    assert [row[:2] for row in r.json()["rows"]] == [[1, "new"]], r.text
    check_response(doc, "/v1/query", "post", r)
    for accept in ("application/vnd.apache.arrow.stream", "text/csv"):
        r = await c.post(
            "/v1/query",
            json={"sql": "select order_id, status from orders"},
            headers={"Accept": accept},
        )
        assert r.status_code == 200, r.text
        check_response(doc, "/v1/query", "post", r)
        documented = doc["paths"]["/v1/query"]["post"]["responses"]["200"]["headers"]
        assert {k.lower() for k in documented} <= set(r.headers.keys())
    r = await c.post("/v1/query", json={"sql": "select 1"}, headers={"Accept": "image/png"})
    assert_error(r, 406, "NOT_ACCEPTABLE")
    check_response(doc, "/v1/query", "post", r)
    r = await server.query("select * from nothing_here")
    assert r.status_code == 400, r.text
    check_response(doc, "/v1/query", "post", r)
    r = await server.query("select 1", snapshot_id=999_999)
    assert_error(r, 404, "SNAPSHOT_NOT_FOUND")
    check_response(doc, "/v1/query", "post", r)

    r = await c.get("/v1/snapshots", params={"limit": 1})
    assert r.status_code == 200, r.text
    check_response(doc, "/v1/snapshots", "get", r)
    snap_id = r.json()["snapshots"][0]["snapshot_id"]
    r = await c.get("/v1/snapshots", params={"limit": 0})
    assert_error(r, 400, "VALIDATION_FAILED")
    check_response(doc, "/v1/snapshots", "get", r)
    r = await c.get(f"/v1/snapshots/{snap_id}")
    assert r.status_code == 200, r.text
    detail = r.json()
    assert [t["name"] for t in detail["tables"]] == ["orders"]
    assert detail["tables"][0]["files"], detail
    check_response(doc, "/v1/snapshots/{snapshot_id}", "get", r)
    r = await c.get("/v1/snapshots/999999")
    assert_error(r, 404, "SNAPSHOT_NOT_FOUND")
    check_response(doc, "/v1/snapshots/{snapshot_id}", "get", r)

    for pinned in (True, False):
        r = await c.post(
            "/v1/snapshots/pin", json={"snapshot_id": snap_id, "pinned": pinned, "reason": "test"}
        )
        assert r.json() == {"snapshot_id": snap_id, "pinned": pinned}, r.text
        check_response(doc, "/v1/snapshots/pin", "post", r)
    r = await c.post("/v1/snapshots/pin", json={"snapshot_id": 999_999})
    assert_error(r, 404, "SNAPSHOT_NOT_FOUND")
    check_response(doc, "/v1/snapshots/pin", "post", r)

    for path in ("/v1/lag", "/v1/health", "/v1/ready", "/v1/ui/schema"):
        r = await c.get(path)
        assert r.status_code == 200, r.text
        check_response(doc, path, "get", r)
    r = await c.get("/v1/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "duckmesh_" in r.text

    r = await c.get("/v1/openapi.json")
    assert r.status_code == 200
    assert r.json() == doc

    r = await c.delete("/v1/tables/orders")
    assert r.json() == {"dropped": "orders"}
    check_response(doc, "/v1/tables/{name}", "delete", r)
    r = await c.delete("/v1/tables/orders")
    assert_error(r, 404, "TABLE_NOT_FOUND")
    check_response(doc, "/v1/tables/{name}", "delete", r)


async def test_document_is_read_once_not_per_request(
    doc: dict[str, Any], server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await server.client.get("/v1/openapi.json")
    assert first.status_code == 200

    class Unreadable:
        def files(self, package: str) -> Any:
            raise AssertionError("the OpenAPI document was read again for a request")

    monkeypatch.setattr(duckmesh.api.openapi, "resources", Unreadable())
    for _ in range(3):
        again = await server.client.get("/v1/openapi.json")
        assert again.status_code == 200
        assert again.content == first.content
        assert again.json() == doc


def test_fallback_validator_rejects_what_it_should(doc: dict[str, Any]) -> None:
    """The hand-written validator is used when jsonschema is absent: prove it bites."""
    schema = {"$ref": "#/components/schemas/Table"}
    good = {
        "name": "t",
        "table_id": "t-1",
        "columns": [{"name": "a", "type": "INTEGER", "nullable": True}],
        "primary_key": [],
        "partition_by": None,
        "retention": {"max_age_days": 3},
        "compatibility": "backward",
        "schema_version": 1,
        "created_at": "2026-01-01",
    }
    assert _errors(schema, good, doc, "$") == []
    bad_cases = [
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "name"},
        {**good, "schema_version": True},
        {**good, "schema_version": 0},
        {**good, "retention": {"max_age_days": 0}},
        {**good, "partition_by": {"event_time": "minute"}},
        {**good, "columns": [{"name": "a", "type": "INTEGER"}]},
    ]
    for bad in bad_cases:
        assert _errors(schema, bad, doc, "$"), bad
    err = {"$ref": "#/components/schemas/Error"}
    unknown_code = {
        "error_code": "NOPE",
        "message": "m",
        "retryable": False,
        "context": {},
        "trace_id": None,
    }
    assert _errors(err, unknown_code, doc, "$")
    # and whichever validator ``validate`` uses:
    validate(doc, schema, good)
    with pytest.raises(AssertionError):
        validate(doc, schema, bad_cases[0])
    with pytest.raises(AssertionError):
        validate(doc, err, unknown_code)
