"""The SQL checker is an allow-list reviewed against DuckDB's whole catalog.

Hole 3 of issue 14: a function that serializes a plan with optimisation on
constant-folded ``current_setting`` at plan time and returned the server's
settings (the tenant data directory among them): the old deny-list did not
know the function. Every function is now allowed or refused on purpose, and a
DuckDB upgrade that adds one fails ``test_every_function_is_classified``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from duckmesh.errors import DuckMeshError
from duckmesh.query import QueryLimits, SnapshotDatabase, check_sql
from duckmesh.query._functions import (
    ALLOWED,
    ALLOWED_FUNCTIONS,
    ALLOWED_TABLE_FUNCTIONS,
    REFUSED,
    REFUSED_FUNCTIONS,
    REFUSED_TABLE_FUNCTION_REASONS,
)

TABLE_KINDS = frozenset({"table", "table_macro", "pragma"})
LIMITS = QueryLimits()


@pytest.fixture(scope="module")
def tenant_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tenant-secret-dir")


@pytest.fixture(scope="module")
def db(tenant_dir: Path) -> Iterator[SnapshotDatabase]:
    # Configured exactly as a tenant's database (the same constructor).
    database = SnapshotDatabase([], allowed_dir=str(tenant_dir), limits=LIMITS)
    yield database
    database.close()


def test_every_function_is_classified(db: SnapshotDatabase) -> None:
    catalog = db.function_catalog()
    assert len(catalog) > 500  # the catalog really was read
    unclassified = sorted(
        f"{name} ({kind})"
        for name, kind in catalog
        if (
            name not in ALLOWED_TABLE_FUNCTIONS and name not in REFUSED_TABLE_FUNCTION_REASONS
            if kind in TABLE_KINDS
            else name not in ALLOWED_FUNCTIONS and name not in REFUSED_FUNCTIONS
        )
    )
    assert not unclassified, (
        "DuckDB exposes functions that are neither allowed nor refused on purpose; "
        f"classify them in duckmesh/query/_functions.py: {unclassified}"
    )


def test_no_function_is_both_allowed_and_refused() -> None:
    assert not ALLOWED_FUNCTIONS & set(REFUSED_FUNCTIONS)
    assert not ALLOWED_TABLE_FUNCTIONS & set(REFUSED_TABLE_FUNCTION_REASONS)
    for groups in (ALLOWED, REFUSED):
        for reason, names in groups.values():
            assert reason.strip()
            assert names


def test_plan_serialization_cannot_fold_settings_into_the_result(
    db: SnapshotDatabase, tenant_dir: Path
) -> None:
    # The attack of hole 3: the inner SQL is a string, so the parse tree of
    # the outer query never shows current_setting; planning with optimisation
    # evaluated it and the plan carried the value back.
    attack = (
        "SELECT json_serialize_plan("
        "'SELECT current_setting(''allowed_directories'') AS x', optimize := true) AS p"
    )
    with pytest.raises(DuckMeshError) as info:
        db.execute(attack, None, LIMITS)
    assert info.value.error_code == "SQL_REJECTED"
    assert "json_serialize_plan" in info.value.message
    assert info.value.context == {"function": "json_serialize_plan"}
    assert str(tenant_dir) not in info.value.message


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT json_serialize_sql('SELECT 1')",
        "SELECT json_deserialize_sql(json_serialize_sql('SELECT 1'))",
        "SELECT getvariable('x')",
        "SELECT version()",
        "SELECT current_database()",
        "SELECT current_schema()",
        "SELECT nextval('s')",
        "SELECT setseed(0.5)",
        "SELECT write_log('x')",
        "SELECT sleep_ms(100000)",
        "SELECT __internal_barrier(1)",
        "SELECT stats(1)",
        "SELECT no_such_function_anywhere(1)",
        "SELECT 1 WHERE 1 IN (SELECT current_setting('threads')::INT)",
        "SELECT (SELECT version()) AS v",
        "SELECT row_number() OVER (ORDER BY current_setting('threads'))",
        "SELECT * FROM json_each('{}')",
        "SELECT * FROM histogram(events, id)",
    ],
)
def test_functions_off_the_allow_list_are_refused_by_name(db: SnapshotDatabase, sql: str) -> None:
    with pytest.raises(DuckMeshError) as info:
        check_sql(sql)
    assert info.value.error_code == "SQL_REJECTED", info.value.message
    assert info.value.context["function"] in sql.lower()
    assert info.value.context["function"] in info.value.message


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT upper('a') || lower('B'), length('abc'), 1 + 2 * 3 % 2",
        "SELECT sum(range), avg(range), quantile_cont(range, 0.5) FROM range(10)",
        "SELECT rank() OVER (ORDER BY range), lag(range) OVER () FROM range(3)",
        "SELECT list_transform([1, 2], lambda x: x + 1), {'a': 1}.a, [1, 2][1]",
        "SELECT json_extract('{\"a\": 1}', '$.a'), date_trunc('day', now())",
        "SELECT 'x' LIKE 'y', 'x' ILIKE 'X', 'x' SIMILAR TO 'x', regexp_matches('a', 'a')",
        "SELECT unnest([1, 2]), CAST(1 AS DECIMAL(10, 2)), TRY(1 / 0), COALESCE(NULL, 1)",
        "SELECT a, grouping(a) FROM (SELECT 1 AS a) GROUP BY ROLLUP (a)",
    ],
)
def test_ordinary_functions_stay_allowed(db: SnapshotDatabase, sql: str) -> None:
    assert db.execute(sql, None, LIMITS).rows
