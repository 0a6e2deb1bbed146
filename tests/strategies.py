"""Hypothesis strategies for DuckMesh, gathered in one module.

Used by the unit tests (types, commands, replay) and by the scenario runner:

- names: :func:`identifiers`, :func:`tenant_ids`;
- column types: :func:`column_types` (``ColumnType`` values, DECIMAL, lists and
  structs included) and :func:`type_spellings` (other texts that parse to the
  same type: aliases, case, ``LIST(T)`` for ``T[]``, quoted struct fields);
- values: :func:`values_for` (JSON values the ingest validator accepts for a
  type) and :func:`invalid_values_for` (values it must reject);
- tables: :func:`table_definitions` (``create_table`` bodies) and
  :func:`schema_evolutions` / :func:`incompatible_evolutions` (``evolve_table``
  bodies that must be accepted / rejected with ``SCHEMA_INCOMPATIBLE``);
- ingest: :func:`ingest_records` (records valid for a given table);
- catalog command sequences: :func:`catalog_commands` draws commands against a
  small in-memory :class:`CatalogModel`, each command knowing the error it must
  raise (if any); :func:`apply_commands` runs them on a real catalog, and
  :func:`assert_catalog_matches` compares the projections with the model.

Snapshots are normally published by the coordinator (and, with unchanged
data, by every table change); for catalog-only sequences
:class:`PublishSnapshot` appends a made-up ``SnapshotPublished`` on
``snapshots:{tenant}`` (the stream's version stays equal to the latest
snapshot id, as the coordinator expects). :class:`Maintenance` events go to a
separate ``maintenance:{tenant}`` stream so they never move that version.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import psycopg
from hypothesis import strategies as st

from duckmesh.catalog import commands, reads
from duckmesh.catalog.journal import append
from duckmesh.catalog.model import ROLES, Column, TableDef
from duckmesh.catalog.types import (
    ColumnType,
    can_widen,
    is_identifier,
    parse_type,
)
from duckmesh.errors import DuckMeshError
from duckmesh.events import stream_version
from duckmesh.events.types import (
    Event,
    FilesCollected,
    MaintenanceCompleted,
    SnapshotPublished,
    SnapshotsExpired,
)

Conn = psycopg.Connection[Any]
JSONValue = Any

# --- names -----------------------------------------------------------------

SCALAR_KINDS = (
    "BOOLEAN",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "FLOAT",
    "DOUBLE",
    "VARCHAR",
    "DATE",
    "TIMESTAMP",
    "TIMESTAMPTZ",
    "JSON",
)
# Scalar kinds a primary key may use (LIST, STRUCT and JSON may not).
KEYABLE_KINDS = frozenset(SCALAR_KINDS) - {"JSON"} | {"DECIMAL"}
# DuckDB reserved words that are natural column or field names.
RESERVED_NAMES = ("order", "from", "select", "group", "limit", "table", "user", "default")


def identifiers(*, max_length: int = 63) -> st.SearchStrategy[str]:
    """Any valid table/column identifier (letters, digits, _; not ``_dm_...``)."""
    return st.from_regex(rf"[A-Za-z_][A-Za-z0-9_]{{0,{max_length - 1}}}", fullmatch=True).filter(
        is_identifier
    )


def simple_names() -> st.SearchStrategy[str]:
    """Short readable identifiers, with reserved words mixed in."""
    return st.one_of(
        st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True),
        st.sampled_from(RESERVED_NAMES),
    ).filter(is_identifier)


def tenant_ids() -> st.SearchStrategy[str]:
    return st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)


# --- column types ----------------------------------------------------------


def decimal_types() -> st.SearchStrategy[ColumnType]:
    return st.integers(1, 38).flatmap(
        lambda p: st.integers(0, p).map(lambda s: ColumnType("DECIMAL", precision=p, scale=s))
    )


def scalar_types() -> st.SearchStrategy[ColumnType]:
    return st.one_of(st.sampled_from([ColumnType(k) for k in SCALAR_KINDS]), decimal_types())


def keyable_types() -> st.SearchStrategy[ColumnType]:
    return scalar_types().filter(lambda t: t.kind in KEYABLE_KINDS)


def struct_types(
    inner: st.SearchStrategy[ColumnType], *, names: st.SearchStrategy[str] | None = None
) -> st.SearchStrategy[ColumnType]:
    fields = st.lists(
        st.tuples(names if names is not None else simple_names(), inner),
        min_size=1,
        max_size=4,
        unique_by=lambda f: f[0].lower(),
    )
    return fields.map(lambda fs: ColumnType("STRUCT", fields=tuple(fs)))


def column_types(*, max_leaves: int = 5) -> st.SearchStrategy[ColumnType]:
    """Every supported column type, nested lists and structs included."""
    return st.recursive(
        scalar_types(),
        lambda inner: st.one_of(
            inner.map(lambda t: ColumnType("LIST", element=t)), struct_types(inner)
        ),
        max_leaves=max_leaves,
    )


_SPELLINGS: dict[str, tuple[str, ...]] = {
    "BOOLEAN": ("BOOLEAN", "BOOL"),
    "SMALLINT": ("SMALLINT", "INT2"),
    "INTEGER": ("INTEGER", "INT", "INT4"),
    "BIGINT": ("BIGINT", "INT8", "LONG"),
    "FLOAT": ("FLOAT", "FLOAT4", "REAL"),
    "DOUBLE": ("DOUBLE", "FLOAT8"),
    "VARCHAR": ("VARCHAR", "STRING", "TEXT"),
    "DATE": ("DATE",),
    "TIMESTAMP": ("TIMESTAMP",),
    "TIMESTAMPTZ": ("TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE"),
    "JSON": ("JSON",),
}
_CASES: tuple[Callable[[str], str], ...] = (str.upper, str.lower, str.title)


@st.composite
def type_spellings(draw: st.DrawFn, t: ColumnType) -> str:
    """A text other than (or equal to) ``t.render()`` that parses back to ``t``."""
    case = draw(st.sampled_from(_CASES))
    if t.kind == "DECIMAL":
        word = case(draw(st.sampled_from(("DECIMAL", "NUMERIC"))))
        space = draw(st.sampled_from(("", " ")))
        return f"{word}({t.precision},{space}{t.scale})"
    if t.kind == "LIST":
        assert t.element is not None
        inner = draw(type_spellings(t.element))
        if draw(st.booleans()):
            return f"{case('LIST')}({inner})"
        return f"{inner}[]"
    if t.kind == "STRUCT":
        parts = []
        for name, ft in t.fields:
            spelled_name = f'"{name}"' if draw(st.booleans()) else name
            parts.append(f"{spelled_name} {draw(type_spellings(ft))}")
        return f"{case('STRUCT')}({', '.join(parts)})"
    return case(draw(st.sampled_from(_SPELLINGS[t.kind])))


# --- values ----------------------------------------------------------------

_INT_BOUNDS = {"SMALLINT": 2**15, "INTEGER": 2**31, "BIGINT": 2**63}
# Text that survives JSON, Postgres text and Parquet (no lone surrogates).
_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)


def _json_values() -> st.SearchStrategy[JSONValue]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        _TEXT,
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(_TEXT, inner, max_size=3)
        ),
        max_leaves=6,
    )


_OFFSETS = st.integers(-14 * 60, 14 * 60).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
_DATETIMES = st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30))


_EVENT_TIMES = st.builds(
    lambda when, offset: when.replace(tzinfo=offset).isoformat(),
    st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1)),
    _OFFSETS,
)


def _timestamps(with_offset: st.SearchStrategy[bool]) -> st.SearchStrategy[str]:
    @st.composite
    def build(draw: st.DrawFn) -> str:
        value = draw(_DATETIMES)
        if draw(with_offset):
            value = value.replace(tzinfo=draw(_OFFSETS))
        return value.isoformat()

    return build()


def _decimal_values(t: ColumnType) -> st.SearchStrategy[JSONValue]:
    # Unscaled integers, scaled exactly: st.decimals and the default 28-digit
    # context both round bounds near 38 digits (10**35 - 1 becomes 10**35).
    ctx = decimal.Context(prec=100)
    top = 10**t.precision - 1
    exact = st.integers(-top, top).map(lambda n: decimal.Decimal(n).scaleb(-t.scale, ctx))
    as_json: list[st.SearchStrategy[JSONValue]] = [exact.map(str)]
    if t.scale == 0:
        as_json.append(exact.map(int))
    if t.precision <= 15:  # as a JSON float: exact to 15 significant digits
        as_json.append(st.integers(-top, top).map(lambda n: n / 10**t.scale))
    return st.one_of(as_json)


def values_for(t: ColumnType) -> st.SearchStrategy[JSONValue]:
    """JSON values (non-null at the top) the ingest validator accepts for ``t``."""
    kind = t.kind
    if kind in _INT_BOUNDS:
        bound = _INT_BOUNDS[kind]
        return st.integers(-bound, bound - 1)
    if kind == "FLOAT":
        return st.one_of(
            st.floats(width=32, allow_nan=False, allow_infinity=False),
            st.integers(-(2**24), 2**24),
        )
    if kind == "DOUBLE":
        return st.one_of(
            st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**53), 2**53)
        )
    if kind == "BOOLEAN":
        return st.booleans()
    if kind == "VARCHAR":
        return _TEXT
    if kind == "JSON":
        return _json_values().filter(lambda v: v is not None)
    if kind == "DECIMAL":
        return _decimal_values(t)
    if kind == "DATE":
        return st.dates().map(dt.date.isoformat)
    if kind == "TIMESTAMP":
        return _timestamps(st.booleans())
    if kind == "TIMESTAMPTZ":
        return _timestamps(st.booleans())
    if kind == "LIST":
        assert t.element is not None
        return st.lists(st.one_of(st.none(), values_for(t.element)), max_size=4)
    assert kind == "STRUCT"
    return st.fixed_dictionaries(
        {}, optional={name: st.one_of(st.none(), values_for(ft)) for name, ft in t.fields}
    )


def _field_of(name: str) -> Callable[[Any], dict[str, Any]]:
    """``v -> {name: v}`` for one struct field (a closure, not a lambda default)."""
    return lambda v: {name: v}


def invalid_values_for(t: ColumnType) -> st.SearchStrategy[JSONValue]:
    """Non-null JSON values the ingest validator must reject for ``t``."""
    kind = t.kind
    wrong_shape = st.one_of(st.lists(st.integers(), max_size=2), st.just({"x": 1}))
    if kind in _INT_BOUNDS:
        bound = _INT_BOUNDS[kind]
        return st.one_of(
            st.booleans(),
            st.floats(),
            _TEXT,
            wrong_shape,
            st.integers(min_value=bound),
            st.integers(max_value=-bound - 1),
        )
    if kind in ("FLOAT", "DOUBLE"):
        too_big = 2.0**128 if kind == "FLOAT" else None
        options: list[st.SearchStrategy[Any]] = [
            st.booleans(),
            _TEXT,
            wrong_shape,
            st.integers(min_value=2**1024),
        ]
        if too_big is not None:
            options.append(st.floats(min_value=too_big, allow_infinity=False))
        return st.one_of(options)
    if kind == "BOOLEAN":
        return st.one_of(st.integers(), _TEXT, st.floats(), wrong_shape)
    if kind == "VARCHAR":
        return st.one_of(st.integers(), st.booleans(), st.floats(), wrong_shape)
    if kind == "DECIMAL":
        limit = decimal.Context(prec=100).power(10, t.precision - t.scale)
        return st.one_of(
            st.booleans(),
            wrong_shape,
            st.sampled_from(["abc", "", "NaN", "Infinity", "1.2.3"]),
            st.decimals(min_value=limit, allow_nan=False, allow_infinity=False).map(str),
            st.decimals(max_value=-limit, allow_nan=False, allow_infinity=False).map(str),
        )
    if kind == "DATE":
        return st.one_of(
            st.integers(), wrong_shape, st.sampled_from(["2024-02-30", "yesterday", "", "24-1-1"])
        )
    if kind in ("TIMESTAMP", "TIMESTAMPTZ"):
        return st.one_of(
            st.integers(),
            wrong_shape,
            st.sampled_from(["2024-13-01T00:00:00", "noon", "", "2024-01-01T25:00:00"]),
        )
    if kind == "LIST":
        assert t.element is not None
        options = [st.just("not a list"), st.just({"a": 1})]
        if t.element.kind != "JSON":
            options.append(invalid_values_for(t.element).map(lambda v: [v]))
        return st.one_of(options)
    if kind == "STRUCT":
        taken = {n.lower() for n, _ in t.fields}
        unknown = simple_names().filter(lambda n: n.lower() not in taken)
        options = [
            st.just([1]),
            st.just("not an object"),
            unknown.map(lambda n: {n: 1}),
        ]
        for name, ft in t.fields:
            if ft.kind != "JSON":
                options.append(invalid_values_for(ft).map(_field_of(name)))
        return st.one_of(options)
    raise AssertionError(f"{kind} accepts every value")


# --- table definitions -----------------------------------------------------


@st.composite
def table_definitions(
    draw: st.DrawFn,
    *,
    names: st.SearchStrategy[str] | None = None,
    types: st.SearchStrategy[ColumnType] | None = None,
    max_columns: int = 6,
    canonical: bool = False,
) -> dict[str, Any]:
    """A valid ``create_table`` body (what ``POST /v1/tables`` takes).

    ``canonical`` spells every type as ``render()`` does; otherwise types use
    random aliases and case, which the catalog stores canonically.
    """
    name = draw(names if names is not None else simple_names())
    cols = draw(
        st.lists(
            st.tuples(
                simple_names(), types if types is not None else column_types(), st.booleans()
            ),
            min_size=1,
            max_size=max_columns,
            unique_by=lambda c: c[0].lower(),
        )
    )
    columns: list[dict[str, Any]] = []
    for col_name, col_type, nullable in cols:
        spelled = col_type.render() if canonical else draw(type_spellings(col_type))
        column: dict[str, Any] = {"name": col_name, "type": spelled}
        if not nullable or draw(st.booleans()):
            column["nullable"] = nullable
        columns.append(column)
    body: dict[str, Any] = {"name": name, "columns": columns}
    keyable = [n for n, t, _ in cols if t.kind in KEYABLE_KINDS]
    wants_key: bool = draw(st.booleans())
    if keyable and wants_key:
        body["primary_key"] = draw(
            st.lists(st.sampled_from(keyable), min_size=1, max_size=2, unique=True)
        )
    elif draw(st.booleans()):
        body["primary_key"] = []
    if draw(st.booleans()):
        body["partition_by"] = draw(
            st.one_of(st.none(), st.sampled_from(["hour", "day"]).map(lambda g: {"event_time": g}))
        )
    if draw(st.booleans()):
        body["retention"] = draw(
            st.one_of(st.none(), st.integers(1, 3650).map(lambda n: {"max_age_days": n}))
        )
    return body


def _as_columns(
    table: TableDef | Mapping[str, Any],
) -> tuple[list[tuple[str, ColumnType, bool]], tuple[str, ...]]:
    """(name, type, nullable) and the key of a ``TableDef`` or a create body."""
    if isinstance(table, TableDef):
        cols = [(c.name, c.parsed, c.nullable) for c in table.columns]
        return cols, table.primary_key
    key = tuple(table.get("primary_key") or ())
    cols = [
        (c["name"], parse_type(c["type"]), bool(c.get("nullable", True)) and c["name"] not in key)
        for c in table["columns"]
    ]
    return cols, key


def widenings(t: ColumnType) -> st.SearchStrategy[ColumnType] | None:
    """Types ``t`` may be widened to (None when there is none)."""
    simple = {
        "SMALLINT": ("INTEGER", "BIGINT", "DOUBLE"),
        "INTEGER": ("BIGINT", "DOUBLE"),
        "FLOAT": ("DOUBLE",),
    }
    if t.kind in simple:
        return st.sampled_from([ColumnType(k) for k in simple[t.kind]])
    if t.kind == "DECIMAL" and t.precision < 38:
        digits = t.precision - t.scale

        @st.composite
        def wider(draw: st.DrawFn) -> ColumnType:
            scale = draw(st.integers(t.scale, 38 - digits))
            precision = draw(st.integers(scale + digits, 38))
            new = ColumnType("DECIMAL", precision=precision, scale=scale)
            return new

        return wider().filter(lambda n: n != t)
    return None


@st.composite
def schema_evolutions(
    draw: st.DrawFn, table: TableDef | Mapping[str, Any], *, max_changes: int = 3
) -> dict[str, Any]:
    """A backward-compatible ``evolve_table`` body: add nullable columns, widen."""
    cols, key = _as_columns(table)
    taken = {n.lower() for n, _, _ in cols}
    widenable = [
        (n, targets) for n, t, _ in cols if n not in key and (targets := widenings(t)) is not None
    ]
    widen: list[dict[str, Any]] = []
    if widenable:
        chosen = draw(st.lists(st.sampled_from(widenable), max_size=2, unique_by=lambda w: w[0]))
        for name, targets in chosen:
            assert targets is not None
            widen.append({"name": name, "type": draw(targets).render()})
    add_names = draw(
        st.lists(
            simple_names().filter(lambda n: n.lower() not in taken),
            min_size=0 if widen else 1,
            max_size=max_changes,
            unique_by=str.lower,
        )
    )
    add = []
    for name in add_names:
        column: dict[str, Any] = {"name": name, "type": draw(column_types(max_leaves=3)).render()}
        if draw(st.booleans()):
            column["nullable"] = True
        add.append(column)
    body: dict[str, Any] = {}
    if add:
        body["add_columns"] = add
    if widen:
        body["widen_columns"] = widen
    return body


@st.composite
def incompatible_evolutions(draw: st.DrawFn, table: TableDef | Mapping[str, Any]) -> dict[str, Any]:
    """An ``evolve_table`` body the catalog must refuse with ``SCHEMA_INCOMPATIBLE``."""
    cols, key = _as_columns(table)
    taken = {n.lower() for n, _, _ in cols}
    options: list[dict[str, Any]] = []
    name, col_type, _ = draw(st.sampled_from(cols))
    # The same name again (in another case, too) is an existing column.
    options.append({"add_columns": [{"name": name.swapcase(), "type": "VARCHAR"}]})
    new_name = draw(simple_names().filter(lambda n: n.lower() not in taken))
    options.append({"add_columns": [{"name": new_name, "type": "INTEGER", "nullable": False}]})
    options.append({"widen_columns": [{"name": new_name, "type": "BIGINT"}]})
    narrower = draw(scalar_types().filter(lambda t: not can_widen(col_type, t)))
    options.append({"widen_columns": [{"name": name, "type": narrower.render()}]})
    types = {n: t for n, t, _ in cols}
    for k in key:
        targets = widenings(types[k])
        if targets is not None:
            options.append({"widen_columns": [{"name": k, "type": draw(targets).render()}]})
    return draw(st.sampled_from(options))


# --- ingest records --------------------------------------------------------


@st.composite
def payloads(
    draw: st.DrawFn, table: TableDef | Mapping[str, Any], *, op: str = "insert"
) -> dict[str, Any]:
    """One record payload valid for ``table`` (only the key for a delete)."""
    cols, key = _as_columns(table)
    payload: dict[str, Any] = {}
    for name, t, nullable in cols:
        if op == "delete" and name not in key:
            continue
        if not nullable or name in key:
            payload[name] = draw(values_for(t))
            continue
        choice = draw(st.sampled_from(("value", "null", "absent")))
        if choice == "value":
            payload[name] = draw(values_for(t))
        elif choice == "null":
            payload[name] = None
    return payload


@st.composite
def ingest_records(
    draw: st.DrawFn,
    table: TableDef | Mapping[str, Any],
    *,
    min_size: int = 1,
    max_size: int = 10,
    key_prefix: str = "r",
) -> list[dict[str, Any]]:
    """Records for ``POST /v1/ingest/{table}``, valid for ``table``, unique keys.

    Keyed tables get ``upsert`` and ``delete``; append-only tables ``insert``
    (sometimes spelled by omitting ``op``).
    """
    _, key = _as_columns(table)
    n = draw(st.integers(min_size, max_size))
    records = []
    for i in range(n):
        op = draw(st.sampled_from(("upsert", "upsert", "delete", "insert") if key else ("insert",)))
        record: dict[str, Any] = {"idempotency_key": f"{key_prefix}-{i}", "op": op}
        if op == "insert" and draw(st.booleans()):
            del record["op"]
        record["payload"] = draw(payloads(table, op=op))
        if draw(st.booleans()):
            record["event_time"] = draw(_EVENT_TIMES)
        records.append(record)
    return records


# --- catalog command sequences ---------------------------------------------


@attrs.frozen
class CreateTenant:
    tenant_id: str
    name: str | None = None
    expect: str | None = None


@attrs.frozen
class DisableTenant:
    tenant_id: str
    expect: str | None = None


@attrs.frozen
class IssueKey:
    tenant_id: str
    roles: tuple[str, ...]
    expect: str | None = None


@attrs.frozen
class RevokeKey:
    key_index: int  # into the keys issued so far, in order
    expect: str | None = None


@attrs.frozen
class CreateTable:
    tenant_id: str
    body: dict[str, Any]
    expect: str | None = None


@attrs.frozen
class EvolveTable:
    tenant_id: str
    name: str
    body: dict[str, Any]
    expect: str | None = None


@attrs.frozen
class DropTable:
    tenant_id: str
    name: str
    expect: str | None = None


@attrs.frozen
class FileSpec:
    file_id: str
    table: str  # table name, resolved to its id when applied
    record_count: int
    size_bytes: int
    min_token: int
    max_token: int
    min_event_time: str | None = None
    max_event_time: str | None = None


@attrs.frozen
class PublishSnapshot:
    """A made-up ``SnapshotPublished`` (what the coordinator would append)."""

    tenant_id: str
    snapshot_id: int
    kind: str
    max_visibility_token: int
    watermarks: tuple[tuple[str, int], ...]  # (table name, watermark)
    files_added: tuple[FileSpec, ...]
    files_removed: tuple[str, ...]
    expect: str | None = None


@attrs.frozen
class PinSnapshot:
    tenant_id: str
    snapshot_id: int
    pinned: bool
    reason: str = ""
    expect: str | None = None


@attrs.frozen
class Maintenance:
    """Maintenance events (expiry, GC, a finished run) on ``maintenance:{tenant}``."""

    tenant_id: str
    expired: tuple[int, ...]
    collected: tuple[str, ...]
    summary: dict[str, Any]
    expect: str | None = None


Command = (
    CreateTenant
    | DisableTenant
    | IssueKey
    | RevokeKey
    | CreateTable
    | EvolveTable
    | DropTable
    | PublishSnapshot
    | PinSnapshot
    | Maintenance
)


@attrs.define
class TableModel:
    name: str
    columns: list[Column]
    primary_key: tuple[str, ...]
    version: int = 1

    def as_body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "columns": [c.to_json() for c in self.columns],
            "primary_key": list(self.primary_key),
        }


@attrs.define
class TenantModel:
    active: bool = True
    tables: dict[str, TableModel] = attrs.field(factory=dict)  # live tables by name
    dropped: int = 0
    snapshots: int = 0
    watermark: int = 0
    live_files: dict[str, str] = attrs.field(factory=dict)  # file id -> table name
    removed_files: set[str] = attrs.field(factory=set)
    pins: set[int] = attrs.field(factory=set)
    expired: set[int] = attrs.field(factory=set)
    collected: set[str] = attrs.field(factory=set)
    maintenance_runs: int = 0

    def schema_snapshot(self, removed: Sequence[str] = ()) -> None:
        """Table changes publish a snapshot of unchanged data (minus a dropped
        table's files) so every snapshot binds one set of schemas."""
        self.snapshots += 1
        for file_id in removed:
            del self.live_files[file_id]
            self.removed_files.add(file_id)

    def table(self, name: str) -> TableModel | None:
        for t in self.tables.values():
            if t.name.lower() == name.lower():
                return t
        return None


@attrs.define
class CatalogModel:
    """What the catalog must contain after a command sequence."""

    tenants: dict[str, TenantModel] = attrs.field(factory=dict)
    keys: list[tuple[str, tuple[str, ...], bool]] = attrs.field(factory=list)  # revoked?
    files: int = 0  # file ids handed out (globally unique)

    def apply(self, cmd: Command) -> None:
        """Advance the model by one command (nothing changes when it must fail)."""
        if cmd.expect is not None:
            return
        match cmd:
            case CreateTenant(tenant_id=tid):
                self.tenants[tid] = TenantModel()
            case DisableTenant(tenant_id=tid):
                self.tenants[tid].active = False
            case IssueKey(tenant_id=tid, roles=roles):
                self.keys.append((tid, tuple(r for r in ROLES if r in roles), False))
            case RevokeKey(key_index=i):
                tid, roles, _ = self.keys[i]
                self.keys[i] = (tid, roles, True)
            case CreateTable(tenant_id=tid, body=body):
                key = tuple(body.get("primary_key") or ())
                columns = [
                    Column(
                        c["name"],
                        parse_type(c["type"]).render(),
                        bool(c.get("nullable", True)) and c["name"] not in key,
                    )
                    for c in body["columns"]
                ]
                self.tenants[tid].tables[body["name"]] = TableModel(body["name"], columns, key)
                self.tenants[tid].schema_snapshot()
            case EvolveTable(tenant_id=tid, name=name, body=body):
                table = self.tenants[tid].tables[name]
                for c in body.get("add_columns", []):
                    table.columns.append(Column(c["name"], parse_type(c["type"]).render(), True))
                for c in body.get("widen_columns", []):
                    i = next(i for i, old in enumerate(table.columns) if old.name == c["name"])
                    old = table.columns[i]
                    table.columns[i] = Column(
                        old.name, parse_type(c["type"]).render(), old.nullable
                    )
                table.version += 1
                self.tenants[tid].schema_snapshot()
            case DropTable(tenant_id=tid, name=name):
                tenant = self.tenants[tid]
                del tenant.tables[name]
                tenant.dropped += 1
                tenant.schema_snapshot(
                    removed=[f for f, table in tenant.live_files.items() if table == name]
                )
            case PublishSnapshot(tenant_id=tid) as snap:
                tenant = self.tenants[tid]
                tenant.snapshots = snap.snapshot_id
                tenant.watermark = snap.max_visibility_token
                for f in snap.files_added:
                    tenant.live_files[f.file_id] = f.table
                for file_id in snap.files_removed:
                    del tenant.live_files[file_id]
                    tenant.removed_files.add(file_id)
                self.files += len(snap.files_added)
            case PinSnapshot(tenant_id=tid, snapshot_id=sid, pinned=pinned):
                pins = self.tenants[tid].pins
                if pinned:
                    pins.add(sid)
                else:
                    pins.discard(sid)
            case Maintenance(tenant_id=tid) as m:
                tenant = self.tenants[tid]
                tenant.expired.update(m.expired)
                tenant.collected.update(m.collected)
                tenant.maintenance_runs += 1

    @classmethod
    def after(cls, cmds: Sequence[Command]) -> CatalogModel:
        model = cls()
        for cmd in cmds:
            model.apply(cmd)
        return model


# Simplest (shrink target) first; creating a tenant last so it is not drawn
# over and over once one exists.
_KINDS = (
    "create_table",
    "publish",
    "evolve_table",
    "issue_key",
    "pin",
    "drop_table",
    "revoke_key",
    "maintenance",
    "disable_tenant",
    "create_tenant",
)
_WEIGHTS = {"create_tenant": 1, "create_table": 4, "evolve_table": 3, "publish": 3}
_TENANT_POOL = ("acme", "globex", "t-1", "x_9")
_TABLE_POOL = ("orders", "events", "Orders", "order", "clicks")


def _next_command(draw: st.DrawFn, model: CatalogModel, kinds: Sequence[str]) -> Command:
    tenants = sorted(model.tenants)
    possible = [
        k
        for k in kinds
        if k == "create_tenant"
        or (tenants and k not in ("revoke_key", "evolve_table", "drop_table", "pin"))
        or (k == "revoke_key" and model.keys)
        or (k in ("evolve_table", "drop_table") and any(model.tenants[t].tables for t in tenants))
        or (k == "pin" and any(model.tenants[t].snapshots for t in tenants))
    ]
    weighted = [k for k in possible for _ in range(_WEIGHTS.get(k, 2))]
    kind = draw(st.sampled_from(weighted))
    if kind == "create_tenant":
        tid = draw(st.one_of(st.sampled_from(_TENANT_POOL), tenant_ids()))
        name = draw(st.one_of(st.none(), _TEXT.filter(lambda s: s.isprintable() and s)))
        return CreateTenant(tid, name, expect="TENANT_EXISTS" if tid in model.tenants else None)
    if kind == "disable_tenant":
        return DisableTenant(draw(st.sampled_from(tenants)))
    if kind == "issue_key":
        tid = draw(st.sampled_from(tenants))
        if draw(st.integers(0, 9)) == 0:
            return IssueKey(tid, ("superuser",), expect="VALIDATION_FAILED")
        roles = draw(st.lists(st.sampled_from(ROLES), min_size=1, unique=True))
        return IssueKey(tid, tuple(roles))
    if kind == "revoke_key":
        return RevokeKey(draw(st.integers(0, len(model.keys) - 1)))
    if kind == "create_table":
        tid = draw(st.sampled_from(tenants))
        live = [t.name for t in model.tenants[tid].tables.values()]
        names = st.one_of(
            simple_names(),
            st.sampled_from(_TABLE_POOL),
            *([st.sampled_from(live).map(str.swapcase)] if live else []),
        )
        body = draw(table_definitions(names=names, max_columns=4))
        clash = model.tenants[tid].table(body["name"]) is not None
        return CreateTable(tid, body, expect="TABLE_EXISTS" if clash else None)
    with_tables = [t for t in tenants if model.tenants[t].tables]
    if kind in ("evolve_table", "drop_table"):
        tid = draw(st.sampled_from(with_tables))
        table = model.tenants[tid].tables[draw(st.sampled_from(sorted(model.tenants[tid].tables)))]
        if kind == "drop_table":
            return DropTable(tid, table.name)
        if draw(st.integers(0, 4)) == 0:
            bad = draw(incompatible_evolutions(table.as_body()))
            return EvolveTable(tid, table.name, bad, expect="SCHEMA_INCOMPATIBLE")
        return EvolveTable(tid, table.name, draw(schema_evolutions(table.as_body())))
    if kind == "pin":
        tid = draw(st.sampled_from([t for t in tenants if model.tenants[t].snapshots]))
        tenant = model.tenants[tid]
        if draw(st.integers(0, 9)) == 0:
            return PinSnapshot(tid, tenant.snapshots + 1, True, expect="SNAPSHOT_NOT_FOUND")
        sid = draw(st.integers(1, tenant.snapshots))
        reason = draw(_TEXT.filter(str.isprintable))
        return PinSnapshot(tid, sid, draw(st.booleans()), reason)
    tid = draw(st.sampled_from(tenants))
    tenant = model.tenants[tid]
    if kind == "maintenance":
        expirable = sorted(set(range(1, tenant.snapshots + 1)) - tenant.pins - tenant.expired)
        collectable = sorted(tenant.removed_files - tenant.collected)
        expired = draw(st.lists(st.sampled_from(expirable), unique=True)) if expirable else []
        collected = draw(st.lists(st.sampled_from(collectable), unique=True)) if collectable else []
        summary = {"expired": len(expired), "collected": len(collected)}
        return Maintenance(tid, tuple(expired), tuple(collected), summary)
    # publish
    table_names = sorted(tenant.tables)
    files: list[FileSpec] = []
    watermarks: dict[str, int] = {}
    token = tenant.watermark
    if table_names:
        for name in draw(st.lists(st.sampled_from(table_names), max_size=3)):
            count = draw(st.integers(1, 50))
            event_times = draw(st.one_of(st.none(), st.tuples(_DATETIMES, _DATETIMES)))
            times: tuple[str | None, str | None] = (None, None)
            if event_times is not None:
                lo, hi = sorted(event_times)
                times = (
                    lo.replace(tzinfo=dt.UTC).isoformat(),
                    hi.replace(tzinfo=dt.UTC).isoformat(),
                )
            files.append(
                FileSpec(
                    file_id=f"file-{model.files + len(files)}",
                    table=name,
                    record_count=count,
                    size_bytes=draw(st.integers(1, 10**9)),
                    min_token=token + 1,
                    max_token=token + count,
                    min_event_time=times[0],
                    max_event_time=times[1],
                )
            )
            token += count
            watermarks[name] = token
    live = sorted(tenant.live_files)
    removed = draw(st.lists(st.sampled_from(live), unique=True)) if live else []
    kind_name = "commit" if files else draw(st.sampled_from(("compaction", "retention", "commit")))
    return PublishSnapshot(
        tid,
        tenant.snapshots + 1,
        kind_name,
        token,
        tuple(sorted(watermarks.items())),
        tuple(files),
        tuple(removed),
    )


@st.composite
def catalog_commands(
    draw: st.DrawFn, *, min_size: int = 1, max_size: int = 25, kinds: Sequence[str] = _KINDS
) -> list[Command]:
    """A sequence of catalog commands, each valid or knowing the error it raises.

    The first command always creates a tenant. ``kinds`` restricts the mix (for
    example without ``"publish"``, ``"pin"`` and ``"maintenance"`` when a real
    coordinator publishes snapshots).
    """
    model = CatalogModel()
    out: list[Command] = []
    n = draw(st.integers(min_size, max_size))
    for i in range(n):
        cmd = _next_command(draw, model, ["create_tenant"] if i == 0 else kinds)
        model.apply(cmd)
        out.append(cmd)
    return out


# --- applying commands to a real catalog -----------------------------------


@attrs.define
class Applied:
    """Ids handed out while applying commands (key ids in issue order)."""

    key_ids: list[str] = attrs.field(factory=list)
    plaintexts: list[str] = attrs.field(factory=list)


def _run(conn: Conn, cmd: Command, applied: Applied) -> None:
    meta = {"actor": "tests.strategies"}
    match cmd:
        case CreateTenant(tenant_id=tid, name=name):
            commands.create_tenant(conn, tid, name, **meta)
        case DisableTenant(tenant_id=tid):
            commands.disable_tenant(conn, tid, **meta)
        case IssueKey(tenant_id=tid, roles=roles):
            key_id, plaintext = commands.issue_key(conn, tid, list(roles), **meta)
            applied.key_ids.append(key_id)
            applied.plaintexts.append(plaintext)
        case RevokeKey(key_index=i):
            commands.revoke_key(conn, applied.key_ids[i], **meta)
        case CreateTable(tenant_id=tid, body=body):
            commands.create_table(conn, tid, body, **meta)
        case EvolveTable(tenant_id=tid, name=name, body=body):
            commands.evolve_table(conn, tid, name, body, **meta)
        case DropTable(tenant_id=tid, name=name):
            commands.drop_table(conn, tid, name, **meta)
        case PublishSnapshot() as snap:
            publish_snapshot(conn, snap)
        case PinSnapshot(tenant_id=tid, snapshot_id=sid, pinned=pinned, reason=reason):
            commands.pin_snapshot(conn, tid, sid, pinned, reason, **meta)
        case Maintenance() as m:
            stream = f"maintenance:{m.tenant_id}"
            events: list[Event] = []
            if m.expired:
                events.append(SnapshotsExpired(m.tenant_id, list(m.expired)))
            if m.collected:
                events.append(FilesCollected(m.tenant_id, list(m.collected)))
            events.append(MaintenanceCompleted(m.tenant_id, "gc", dict(m.summary)))
            append(
                conn,
                stream,
                stream_version(conn, stream),
                events,
                tenant_id=m.tenant_id,
                metadata=meta,
            )


def publish_snapshot(conn: Conn, snap: PublishSnapshot) -> None:
    """Append the ``SnapshotPublished`` a coordinator would (made-up files)."""
    stream = commands.snapshots_stream(snap.tenant_id)
    version = stream_version(conn, stream)
    ids: dict[str, str] = {}

    def table_id(name: str) -> str:
        if name not in ids:
            table = reads.get_table(conn, snap.tenant_id, name)
            assert table is not None, f"no live table {name!r}"
            ids[name] = table.table_id
        return ids[name]

    files = [
        {
            "file_id": f.file_id,
            "table_id": table_id(f.table),
            "path": f"{snap.tenant_id}/{f.table}/part-{snap.snapshot_id}-{f.file_id}.parquet",
            "schema_version": 1,
            "record_count": f.record_count,
            "size_bytes": f.size_bytes,
            "checksum": hashlib.sha256(f.file_id.encode()).hexdigest(),
            "min_token": f.min_token,
            "max_token": f.max_token,
            "min_event_time": f.min_event_time,
            "max_event_time": f.max_event_time,
        }
        for f in snap.files_added
    ]
    event = SnapshotPublished(
        tenant_id=snap.tenant_id,
        snapshot_id=snap.snapshot_id,
        kind=snap.kind,
        created_by="tests.strategies",
        max_visibility_token=snap.max_visibility_token,
        parent_id=version or None,
        table_watermarks={table_id(name): w for name, w in snap.watermarks},
        files_added=files,
        files_removed=list(snap.files_removed),
    )
    append(
        conn,
        stream,
        version,
        [event],
        tenant_id=snap.tenant_id,
        metadata={"actor": "tests.strategies"},
    )


def apply_command(conn: Conn, cmd: Command, applied: Applied) -> None:
    """Run one command in its own transaction; check it fails exactly as expected."""
    try:
        with conn.transaction():
            _run(conn, cmd, applied)
    except DuckMeshError as exc:
        if exc.error_code != cmd.expect:
            raise AssertionError(f"{cmd!r} failed with {exc.error_code}: {exc.message}") from exc
        return
    if cmd.expect is not None:
        raise AssertionError(f"{cmd!r} succeeded; expected {cmd.expect}")


def apply_commands(conn: Conn, cmds: Sequence[Command]) -> Applied:
    """Apply a sequence on an autocommit connection, one transaction per command."""
    applied = Applied()
    for cmd in cmds:
        apply_command(conn, cmd, applied)
    return applied


def assert_catalog_matches(conn: Conn, model: CatalogModel, applied: Applied) -> None:
    """The projections hold what the model says (read through ``reads`` and SQL)."""
    rows = conn.execute("SELECT tenant_id, status FROM tenant ORDER BY 1").fetchall()
    assert rows == [
        (tid, "active" if t.active else "disabled") for tid, t in sorted(model.tenants.items())
    ]
    keys = {
        r[0]: (r[1], tuple(r[2]), r[3] is not None)
        for r in conn.execute("SELECT key_id, tenant_id, roles, revoked_at FROM api_key")
    }
    assert keys == dict(zip(applied.key_ids, model.keys, strict=True))
    for tid, tenant in model.tenants.items():
        live = {t.name: t for t in reads.list_tables(conn, tid)}
        assert sorted(live) == sorted(tenant.tables)
        for name, expected in tenant.tables.items():
            got = live[name]
            assert list(got.columns) == expected.columns, name
            assert got.primary_key == expected.primary_key
            assert got.schema_version == expected.version
            for version in range(1, expected.version + 1):
                assert reads.schema_columns(conn, got.table_id, version)
        dropped = conn.execute(
            "SELECT count(*) FROM table_def WHERE tenant_id = %s AND dropped_at IS NOT NULL",
            (tid,),
        ).fetchone()
        assert dropped is not None
        assert dropped[0] == tenant.dropped
        head = reads.latest_snapshot(conn, tid)
        assert (head.snapshot_id if head else 0) == tenant.snapshots
        assert (head.max_visibility_token if head else 0) == tenant.watermark
        if head is not None:
            files = reads.snapshot_files(conn, tid, head.snapshot_id)
            assert sorted(f.file_id for f in files) == sorted(tenant.live_files)
        pins = conn.execute(
            "SELECT snapshot_id FROM snapshot_pin WHERE tenant_id = %s ORDER BY 1", (tid,)
        ).fetchall()
        assert [p[0] for p in pins] == sorted(tenant.pins)
        expired = conn.execute(
            "SELECT snapshot_id FROM snapshot WHERE tenant_id = %s AND expired_at IS NOT NULL"
            " ORDER BY 1",
            (tid,),
        ).fetchall()
        assert [e[0] for e in expired] == sorted(tenant.expired)
