"""Decide, with DuckDB's own parser, whether a user's SQL may run in the sandbox.

Why it exists: tenants send arbitrary SQL, and DuckDB can read files, attach
databases, install extensions and change its own configuration. The sandboxed
database is locked down as well (see ``sandbox.py``); this module is the first
wall, and the one that produces clear error messages.

What it guarantees: ``analyze`` accepts a statement only if DuckDB parses it as
exactly one SELECT (including WITH, VALUES and set operations) whose parsed
tree, walked in full, contains

* table references that are bare names (no catalog or schema, no file path,
  no system catalog such as ``pg_*``/``duckdb_*``/``sqlite_*``), subqueries,
  joins, VALUES lists, PIVOT/UNPIVOT, or one of the allow-listed table
  functions (``range``, ``generate_series``, ``unnest``);
* function calls that are unqualified and not on the deny-list of functions
  that reveal configuration, the environment or the catalog.

Any construct the walker does not know is refused (fail closed). No regular
expression ever looks at the SQL text: only DuckDB's parse tree is inspected.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import attrs
import duckdb

from duckmesh.errors import DuckMeshError

ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})

# Scalar functions and macros that touch configuration, the environment or the
# catalog. Table functions never appear here: every table function outside the
# allow-list above is refused wherever it is used.
DENIED_FUNCTIONS = frozenset(
    {
        "current_setting",
        "getenv",
        "getvariable",
        "write_log",
        "read_text",
        "read_blob",
        "read_csv",
        "read_csv_auto",
        "read_parquet",
        "parquet_scan",
        "read_json",
        "read_json_auto",
        "read_ndjson",
        "glob",
        "query",
        "query_table",
        "sniff_csv",
        "json_execute_serialized_sql",
        "pg_get_viewdef",
        "pg_get_constraintdef",
        "pg_get_expr",
        "pg_get_indexdef",
        "pg_get_functiondef",
        "format_type",
        "get_block_size",
        "col_description",
        "obj_description",
        "shobj_description",
        "which_secret",
        "parse_duckdb_log_message",
    }
)
DENIED_FUNCTION_PREFIXES = ("duckdb_", "pragma_", "read_", "parquet_", "__internal", "pg_get_")

# Bare names that would resolve to DuckDB's system catalogs through the
# default search path (pg_catalog.pg_settings, main.duckdb_tables, ...).
DENIED_TABLE_PREFIXES = ("duckdb_", "pg_", "sqlite_", "pragma_", "information_schema")

# Characters that make a table name a file path or glob (replacement scans).
_PATH_CHARACTERS = frozenset("/\\.~:*?[]{}")

_TABLE_REF_TYPES = frozenset(
    {"BASE_TABLE", "JOIN", "SUBQUERY", "TABLE_FUNCTION", "EXPRESSION_LIST", "EMPTY", "PIVOT"}
)
_QUERY_NODE_TYPES = frozenset(
    {"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"}
)
_MODIFIER_TYPES = frozenset(
    {"LIMIT_MODIFIER", "LIMIT_PERCENT_MODIFIER", "ORDER_MODIFIER", "DISTINCT_MODIFIER"}
)
_ORDER_TYPES = frozenset({"ORDER_DEFAULT", "ASCENDING", "DESCENDING"})
_KNOWN_NODE_TYPES = _TABLE_REF_TYPES | _QUERY_NODE_TYPES | _MODIFIER_TYPES | _ORDER_TYPES
# DuckDB's statement types that do not read as the SQL keyword the user wrote.
_STATEMENT_NAMES = {"LOAD": "INSTALL/LOAD", "MULTI": "PIVOT (use SELECT ... PIVOT ...)"}
_SHOW_HINT = "DESCRIBE, SHOW and SUMMARIZE are not available; query the table instead"


@attrs.frozen
class SqlAnalysis:
    """What a checked statement refers to (names are lower-cased)."""

    table_names: frozenset[str]
    cte_names: frozenset[str]


def _reject(message: str, **context: Any) -> DuckMeshError:
    return DuckMeshError("SQL_REJECTED", message, **context)


def _is_denied_function(name: str) -> bool:
    return name in DENIED_FUNCTIONS or name.startswith(DENIED_FUNCTION_PREFIXES)


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in the parse tree, parents before children."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_base_table(ref: dict[str, Any], tables: set[str]) -> None:
    name = str(ref.get("table_name", ""))
    path = ref.get("qualified_name", {}).get("path", [name])
    if ref.get("catalog_name") or ref.get("schema_name") or len(path) > 1:
        shown = ".".join(str(part) for part in path)
        raise _reject(
            f"table reference {shown!r} is refused: only bare table names of this "
            "snapshot can be queried (no catalog or schema qualifiers)",
            table=shown,
        )
    if not name or any(ch in _PATH_CHARACTERS for ch in name):
        raise _reject(
            f"table reference {name!r} is refused: reading files by path is not allowed; "
            "query the tenant's tables by name",
            table=name,
        )
    lowered = name.lower()
    if lowered.startswith(DENIED_TABLE_PREFIXES):
        raise _reject(
            f"table reference {name!r} is refused: system catalogs are not available",
            table=name,
        )
    tables.add(lowered)


def _check_table_function(ref: dict[str, Any]) -> None:
    function = ref.get("function") or {}
    name = str(function.get("function_name", "")).lower()
    if function.get("class") != "FUNCTION" or function.get("schema") or function.get("catalog"):
        raise _reject(
            f"table function {name!r} is refused: only unqualified range(), "
            "generate_series() and unnest() are allowed in FROM",
            function=name,
        )
    if name not in ALLOWED_TABLE_FUNCTIONS:
        raise _reject(
            f"table function {name!r} is refused: only range(), generate_series() and "
            "unnest() are allowed in FROM (files, catalogs and settings are not reachable)",
            function=name,
        )


def _check_function(expr: dict[str, Any]) -> None:
    name = str(expr.get("function_name", "")).lower()
    if expr.get("schema") or expr.get("catalog"):
        raise _reject(
            f"function {name!r} is refused: qualified function names are not allowed",
            function=name,
        )
    if _is_denied_function(name):
        raise _reject(
            f"function {name!r} is refused: it exposes configuration, the environment, "
            "files or the catalog",
            function=name,
        )


def _check_tree(statement: dict[str, Any]) -> SqlAnalysis:
    tables: set[str] = set()
    ctes: set[str] = set()
    for node in _walk(statement):
        if "cte_map" in node:
            for entry in node["cte_map"].get("map", []):
                ctes.add(str(entry.get("key", "")).lower())
        kind = node.get("type")
        if not isinstance(kind, str):
            continue
        if "class" in node:
            # An expression. Only function calls can reach outside the query.
            if node["class"] == "FUNCTION":
                _check_function(node)
            continue
        if kind == "BASE_TABLE":
            _check_base_table(node, tables)
        elif kind == "TABLE_FUNCTION":
            _check_table_function(node)
        elif kind == "SHOW_REF":
            raise _reject(f"statement refused: {_SHOW_HINT}")
        elif kind not in _KNOWN_NODE_TYPES:
            raise _reject(
                f"statement refused: the construct {kind} is not supported in queries",
                construct=kind,
            )
    return SqlAnalysis(table_names=frozenset(tables), cte_names=frozenset(ctes))


# The verdict depends on the text alone, and parsing costs about as much as a
# small query, so verdicts on short statements are remembered.
_CACHE_ENTRIES = 2048
_CACHE_MAX_SQL = 8192
_cache_lock = threading.Lock()
_cache: OrderedDict[str, SqlAnalysis | DuckMeshError] = OrderedDict()


def analyze(conn: duckdb.DuckDBPyConnection, sql: str) -> SqlAnalysis:
    """Check ``sql`` using ``conn`` for parsing only; raise SQL_REJECTED / SQL_ERROR.

    ``conn`` is never asked to bind or run ``sql``: only DuckDB's parser and
    ``json_serialize_sql`` (a pure function of the text) are used.
    """
    cacheable = len(sql) <= _CACHE_MAX_SQL
    if cacheable:
        with _cache_lock:
            verdict = _cache.get(sql)
            if verdict is not None:
                _cache.move_to_end(sql)
        if isinstance(verdict, SqlAnalysis):
            return verdict
        if verdict is not None:
            raise DuckMeshError(verdict.error_code, verdict.message, **verdict.context)
    try:
        analysis = _analyze(conn, sql)
    except DuckMeshError as exc:
        # Cache a copy: the raised instance carries its traceback.
        _remember(sql, DuckMeshError(exc.error_code, exc.message, **exc.context), cacheable)
        raise
    _remember(sql, analysis, cacheable)
    return analysis


def _remember(sql: str, verdict: SqlAnalysis | DuckMeshError, cacheable: bool) -> None:
    if not cacheable:
        return
    with _cache_lock:
        _cache[sql] = verdict
        while len(_cache) > _CACHE_ENTRIES:
            _cache.popitem(last=False)


def _analyze(conn: duckdb.DuckDBPyConnection, sql: str) -> SqlAnalysis:
    try:
        statements = conn.extract_statements(sql)
    except duckdb.ParserException as exc:
        raise DuckMeshError("SQL_ERROR", str(exc)) from None
    if not statements:
        raise _reject("statement refused: the query is empty")
    if len(statements) > 1:
        raise _reject(
            f"statement refused: exactly one SELECT statement is allowed, got {len(statements)}",
            statements=len(statements),
        )
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        name = _STATEMENT_NAMES.get(kind.name, kind.name)
        raise _reject(
            f"statement refused: only read-only SELECT queries are allowed, not {name}",
            statement_type=name,
        )
    row = conn.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    tree: dict[str, Any] = json.loads(row[0]) if row is not None else {"error": True}
    if tree.get("error"):
        # The parser accepted the text as a SELECT but it cannot be inspected:
        # refuse rather than run something that was not checked.
        message = tree.get("error_message", "unsupported statement")
        raise _reject(f"statement refused: it cannot be inspected ({message})")
    parsed = tree.get("statements")
    if not isinstance(parsed, list) or len(parsed) != 1:
        raise _reject("statement refused: exactly one SELECT statement is allowed")
    return _check_tree(parsed[0])


_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


def _parser_cursor() -> duckdb.DuckDBPyConnection:
    """A cursor on a private, locked-down database used only for parsing."""
    global _parser
    with _parser_lock:
        if _parser is None:
            conn = duckdb.connect(":memory:")
            for statement in (
                "SET autoinstall_known_extensions = false",
                "SET autoload_known_extensions = false",
                "SET enable_external_access = false",
                "SET lock_configuration = true",
            ):
                conn.execute(statement)
            _parser = conn
        return _parser.cursor()


def check_sql(sql: str) -> None:
    """Raise SQL_REJECTED unless ``sql`` is exactly one read-only, sandbox-safe SELECT.

    Syntax errors raise SQL_ERROR with DuckDB's message.
    """
    cursor = _parser_cursor()
    try:
        analyze(cursor, sql)
    finally:
        cursor.close()
