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
* function calls (scalar, aggregate, window) that are unqualified and on the
  reviewed allow-list in ``_functions`` (everything else, including plan and
  SQL serialization, settings, catalog and file functions, is refused);
* expression classes from an explicit list.

Before DuckDB parses anything, ``precheck`` bounds the text (bytes, tokens,
parenthesis depth, set operations) with DuckDB's own tokenizer, because
DuckDB's parser and planner cannot be interrupted and grow without bound on
pathological text; after parsing, the expansion of CTEs referenced several
times is bounded too (planning inlines them: a chain of CTEs each reading the
previous one twice plans 2^n scans). A parse tree too deep for Python is
refused, never a RecursionError.

Any construct the walker does not know is refused (fail closed). No regular
expression ever looks at the SQL text: only DuckDB's tokens and parse tree.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import duckdb

from duckmesh.catalog.types import RESERVED_TABLE_PREFIXES
from duckmesh.errors import DuckMeshError
from duckmesh.lru import LRU
from duckmesh.query._functions import (
    ALLOWED_FUNCTIONS,
    ALLOWED_TABLE_FUNCTIONS,
    REFUSED_FUNCTIONS,
    REFUSED_TABLE_FUNCTION_REASONS,
)

# Structural limits, measured on DuckDB 2.0 (docs/SECURITY.md, "Query sandbox"):
# 4,000 UNION ALL branches plan for 2 s and 500 MB that no interrupt reaches,
# 1,000 plan in 0.1 s; parenthesis depth 1,000 is DuckDB's own parser limit.
DEFAULT_MAX_SQL_BYTES = 64 * 1024
MAX_TOKENS = 20_000
MAX_NESTING_DEPTH = 100
MAX_SET_OPERATIONS = 500
MAX_CTE_DEFINITIONS = 200
# Join ordering is planned without interrupts: a chain of 50 joins plans in
# 0.3 s, of 100 in over 1 s, of 200 in 26 s.
MAX_JOINS = 64
MAX_EXPANDED_REFERENCES = 2_000
# DuckDB's own expression depth limit (default 1000) for parser and binder.
MAX_EXPRESSION_DEPTH = 250
_SET_OPERATION_KEYWORDS = frozenset({"union", "intersect", "except"})
_EXPRESSION_CLASSES = frozenset(
    {
        "BETWEEN",
        "CASE",
        "CAST",
        "COLLATE",
        "COLUMN_REF",
        "COMPARISON",
        "CONJUNCTION",
        "CONSTANT",
        "FUNCTION",
        "LAMBDA",
        "LAMBDA_REF",
        "OPERATOR",
        "PARAMETER",
        "POSITIONAL_REFERENCE",
        "STAR",
        "SUBQUERY",
        "TYPE",
        "WINDOW",
    }
)

# Bare names that would resolve to DuckDB's system catalogs through the
# default search path (pg_catalog.pg_settings, main.duckdb_tables, ...); the
# catalog refuses tables with these names, so no tenant table is hidden.
DENIED_TABLE_PREFIXES = RESERVED_TABLE_PREFIXES

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
        reason = REFUSED_TABLE_FUNCTION_REASONS.get(name, "it is not on the sandbox's allow-list")
        raise _reject(
            f"table function {name!r} is refused: {reason}; only range(), "
            "generate_series() and unnest() are allowed in FROM",
            function=name,
        )


def _check_function(expr: dict[str, Any]) -> None:
    name = str(expr.get("function_name", "")).lower()
    if expr.get("schema") or expr.get("catalog"):
        raise _reject(
            f"function {name!r} is refused: qualified function names are not allowed",
            function=name,
        )
    if name not in ALLOWED_FUNCTIONS:
        reason = REFUSED_FUNCTIONS.get(
            name, "it is not on the sandbox's allow-list (or does not exist)"
        )
        raise _reject(f"function {name!r} is refused: {reason}", function=name)


def _check_expression(node: dict[str, Any]) -> None:
    klass = node["class"]
    if klass not in _EXPRESSION_CLASSES:
        raise _reject(
            f"statement refused: the expression {klass} is not supported in queries",
            construct=klass,
        )
    if klass == "FUNCTION" or (klass == "WINDOW" and node.get("function_name")):
        _check_function(node)


@attrs.define
class _Ctes:
    """CTE definitions and table references, to bound how far planning inlines them."""

    bodies: list[tuple[str, dict[str, Any]]] = attrs.Factory(list)
    references: list[str] = attrs.Factory(list)

    def add_map(self, cte_map: dict[str, Any]) -> None:
        for entry in cte_map.get("map", []):
            self.bodies.append((str(entry.get("key", "")).lower(), entry.get("value") or {}))
        if len(self.bodies) > MAX_CTE_DEFINITIONS:
            raise _reject(
                f"statement refused: more than {MAX_CTE_DEFINITIONS} CTE definitions",
                limit=MAX_CTE_DEFINITIONS,
            )

    def names(self) -> frozenset[str]:
        return frozenset(name for name, _ in self.bodies)

    def check_expansion(self) -> None:
        """Refuse when inlining CTEs would plan more than MAX_EXPANDED_REFERENCES scans.

        A CTE's weight is 1 plus the weights of the CTEs its body references;
        weights saturate at the limit, so the fixed point (at most one pass per
        definition) is reached quickly even for recursive or shadowed names.
        """
        if not self.bodies:
            return
        cap = MAX_EXPANDED_REFERENCES + 1
        refs = [(name, _referenced_names(body)) for name, body in self.bodies]
        weight = dict.fromkeys(self.names(), 1)
        for _ in range(len(refs)):
            changed = False
            for name, used in refs:
                total = min(cap, 1 + sum(weight.get(r, 0) for r in used if r != name))
                if total > weight[name]:
                    weight[name], changed = total, True
            if not changed:
                break
        expanded = sum(weight.get(name, 1) for name in self.references)
        if expanded > MAX_EXPANDED_REFERENCES:
            raise _reject(
                "statement refused: its CTEs reference each other so often that planning "
                f"would inline more than {MAX_EXPANDED_REFERENCES} table scans "
                "(reference each CTE fewer times, or aggregate earlier)",
                limit=MAX_EXPANDED_REFERENCES,
            )


def _referenced_names(body: dict[str, Any]) -> list[str]:
    return [
        str(node.get("table_name", "")).lower()
        for node in _walk(body)
        if node.get("type") == "BASE_TABLE" and "class" not in node
    ]


def _check_tree(statement: dict[str, Any]) -> SqlAnalysis:
    tables: set[str] = set()
    ctes = _Ctes()
    joins = 0
    for node in _walk(statement):
        if "cte_map" in node:
            ctes.add_map(node["cte_map"])
        kind = node.get("type")
        if not isinstance(kind, str):
            continue
        if "class" in node:
            _check_expression(node)
            continue
        if kind == "BASE_TABLE":
            _check_base_table(node, tables)
            ctes.references.append(str(node.get("table_name", "")).lower())
        elif kind == "TABLE_FUNCTION":
            _check_table_function(node)
        elif kind == "JOIN":
            joins += 1
            if joins > MAX_JOINS:
                raise _reject(f"statement refused: more than {MAX_JOINS} joins", limit=MAX_JOINS)
        elif kind == "SHOW_REF":
            raise _reject(f"statement refused: {_SHOW_HINT}")
        elif kind not in _KNOWN_NODE_TYPES:
            raise _reject(
                f"statement refused: the construct {kind} is not supported in queries",
                construct=kind,
            )
    ctes.check_expansion()
    return SqlAnalysis(table_names=frozenset(tables), cte_names=ctes.names())


def precheck(sql: str, max_sql_bytes: int = DEFAULT_MAX_SQL_BYTES) -> None:
    """Refuse text that DuckDB's (uninterruptible) parser and planner should never see.

    Uses DuckDB's tokenizer (linear, allocation-light), so string literals,
    quoted names and comments are told apart from the brackets and keywords
    that count.
    """
    size = len(sql.encode("utf-8", "surrogatepass"))
    if size > max_sql_bytes:
        raise _reject(
            f"statement refused: the SQL text is {size} bytes, over the limit of "
            f"{max_sql_bytes} bytes",
            sql_bytes=size,
            limit=max_sql_bytes,
        )
    tokens = duckdb.tokenize(sql)
    if len(tokens) > MAX_TOKENS:
        raise _reject(
            f"statement refused: {len(tokens)} tokens, over the limit of {MAX_TOKENS}",
            tokens=len(tokens),
            limit=MAX_TOKENS,
        )
    depth = set_operations = 0
    ends = [position for position, _ in tokens[1:]] + [len(sql)]
    for (start, kind), end in zip(tokens, ends, strict=True):
        if kind == duckdb.token_type.operator:
            text = sql[start:end]
            depth += text.count("(") - text.count(")")
            if depth > MAX_NESTING_DEPTH:
                raise _reject(
                    f"statement refused: brackets nested deeper than {MAX_NESTING_DEPTH}",
                    limit=MAX_NESTING_DEPTH,
                )
        elif (
            kind == duckdb.token_type.keyword
            and end - start <= 9
            and sql[start:end].strip().lower() in _SET_OPERATION_KEYWORDS
        ):
            set_operations += 1
    if set_operations > MAX_SET_OPERATIONS:
        raise _reject(
            f"statement refused: {set_operations} UNION/INTERSECT/EXCEPT operations, "
            f"over the limit of {MAX_SET_OPERATIONS}",
            set_operations=set_operations,
            limit=MAX_SET_OPERATIONS,
        )


# The verdict depends on the text alone, and parsing costs about as much as a
# small query, so verdicts on short statements are remembered.
_CACHE_ENTRIES = 2048
_CACHE_MAX_SQL = 8192
_cache_lock = threading.Lock()
_cache: LRU[str, SqlAnalysis | DuckMeshError] = LRU(_CACHE_ENTRIES)


def analyze(
    conn: duckdb.DuckDBPyConnection, sql: str, max_sql_bytes: int = DEFAULT_MAX_SQL_BYTES
) -> SqlAnalysis:
    """Check ``sql`` using ``conn`` for parsing only; raise SQL_REJECTED / SQL_ERROR.

    ``conn`` is never asked to bind or run ``sql``: only DuckDB's parser and
    ``json_serialize_sql`` (a pure function of the text) are used.
    """
    if len(sql) > max_sql_bytes:  # cheap first cut; precheck counts UTF-8 bytes
        precheck(sql, max_sql_bytes)
    cacheable = len(sql) <= _CACHE_MAX_SQL
    if cacheable:
        with _cache_lock:
            verdict = _cache.get(sql)
        if isinstance(verdict, SqlAnalysis):
            return verdict
        if verdict is not None:
            raise DuckMeshError(verdict.error_code, verdict.message, **verdict.context)
    try:
        precheck(sql, max_sql_bytes)
        analysis = _analyze(conn, sql)
    except RecursionError:
        # A parse tree deeper than Python's stack: refused, never a 500.
        exc = _reject("statement refused: it is nested too deeply")
        _remember(sql, DuckMeshError(exc.error_code, exc.message), cacheable)
        raise exc from None
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
        _cache.put(sql, verdict)


def _analyze(conn: duckdb.DuckDBPyConnection, sql: str) -> SqlAnalysis:
    try:
        statements = conn.extract_statements(sql)
    except duckdb.ParserException as exc:
        if "expression depth" in str(exc):
            raise _reject(
                f"statement refused: expressions nested deeper than {MAX_EXPRESSION_DEPTH}",
                limit=MAX_EXPRESSION_DEPTH,
            ) from None
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
                f"SET max_expression_depth = {MAX_EXPRESSION_DEPTH}",
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


# DuckDB converts nested parameter lists recursively and stalls on deep ones
# (2,000 levels did not finish in a minute); no column type nests this deep.
MAX_PARAM_DEPTH = 64


def check_params(params: Sequence[object]) -> None:
    """Refuse parameters nested deeper than MAX_PARAM_DEPTH (VALIDATION_FAILED)."""
    stack: list[tuple[object, int]] = [(value, 1) for value in params]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if not isinstance(value, (list, tuple)):
            continue
        if depth > MAX_PARAM_DEPTH:
            raise DuckMeshError(
                "VALIDATION_FAILED",
                f"params are nested deeper than {MAX_PARAM_DEPTH} levels",
                field="params",
                limit=MAX_PARAM_DEPTH,
            )
        stack.extend((item, depth + 1) for item in value)
