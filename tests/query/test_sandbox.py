"""The query sandbox: snapshot views over real Parquet files, and what it refuses."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import duckdb
import pytest

from duckmesh.errors import DuckMeshError
from duckmesh.query import (
    ColumnSpec,
    QueryLimits,
    SnapshotDatabase,
    TableBinding,
    check_sql,
)
from duckmesh.query.sandbox import SnapshotNotLoaded

Row = tuple[object, ...]


def write_parquet(path: Path, columns: list[tuple[str, str]], rows: list[Row]) -> str:
    """Write ``rows`` as ``(_dm_token, _dm_op, *user values)`` to a Parquet file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = duckdb.connect(":memory:")
    try:
        spec = ", ".join(f'"{name}" {type_}' for name, type_ in columns)
        conn.execute(f"CREATE TABLE t (_dm_token BIGINT, _dm_op VARCHAR, {spec})")
        if rows:
            marks = ", ".join("?" for _ in range(len(columns) + 2))
            conn.executemany(f"INSERT INTO t VALUES ({marks})", [list(row) for row in rows])
        conn.execute(f"COPY t TO '{path}' (FORMAT parquet)")
    finally:
        conn.close()
    return str(path)


def binding(
    name: str,
    columns: list[tuple[str, str]],
    files: list[str],
    *,
    primary_key: tuple[str, ...] = (),
    file_columns: list[str] | None = None,
) -> TableBinding:
    return TableBinding(
        name=name,
        columns=tuple(ColumnSpec(n, t) for n, t in columns),
        primary_key=primary_key,
        files=tuple(files),
        file_columns=tuple(file_columns if file_columns is not None else [n for n, _ in columns]),
        total_bytes=sum(Path(f).stat().st_size for f in files),
    )


# Files and the database are shared by the tests of this module (they only
# read); tests that damage files or close databases build their own.


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def tenant_dir(data_root: Path) -> Path:
    path = data_root / "tenant-a"
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="module")
def other_tenant_file(data_root: Path) -> str:
    return write_parquet(
        data_root / "tenant-b" / "secret.parquet",
        [("secret", "VARCHAR")],
        [(1, "insert", "tenant-b only")],
    )


@pytest.fixture(scope="module")
def bindings(tenant_dir: Path) -> list[TableBinding]:
    events_cols = [("id", "INTEGER"), ("name", "VARCHAR")]
    events = binding(
        "events",
        events_cols,
        [
            write_parquet(
                tenant_dir / "events" / "1.parquet",
                events_cols,
                [(1, "insert", 1, "a"), (2, "insert", 2, "b")],
            ),
            write_parquet(
                tenant_dir / "events" / "2.parquet", events_cols, [(3, "insert", 3, "c")]
            ),
        ],
    )
    user_cols = [("id", "BIGINT"), ("name", "VARCHAR"), ("score", "DECIMAL(10,2)")]
    users = binding(
        "users",
        user_cols,
        [
            write_parquet(
                tenant_dir / "users" / "1.parquet",
                user_cols,
                [
                    (10, "insert", 1, "ann", "1.50"),
                    (11, "insert", 2, "bob", "2.00"),
                    (12, "insert", 3, "cat", "3.25"),
                ],
            ),
            write_parquet(
                tenant_dir / "users" / "2.parquet",
                user_cols,
                [(13, "upsert", 2, "bobby", "20.00"), (14, "delete", 3, None, None)],
            ),
            write_parquet(
                tenant_dir / "users" / "3.parquet",
                user_cols,
                [(16, "upsert", 3, "cat again", "4.00"), (17, "delete", 1, None, None)],
            ),
        ],
        primary_key=("id",),
    )
    old_cols = [("id", "INTEGER"), ("v", "FLOAT")]
    new_cols = [("id", "BIGINT"), ("v", "DOUBLE"), ("extra", "VARCHAR")]
    evolved = binding(
        "evolved",
        [*new_cols, ("newest", "VARCHAR")],
        [
            write_parquet(tenant_dir / "evolved" / "1.parquet", old_cols, [(20, "insert", 1, 0.5)]),
            write_parquet(
                tenant_dir / "evolved" / "2.parquet",
                new_cols,
                [(21, "insert", 5_000_000_000, 1.25, "x")],
            ),
        ],
        file_columns=["id", "v", "extra"],
    )
    empty = binding("empty", [("id", "BIGINT"), ("tags", "VARCHAR[]")], [])
    return [events, users, evolved, empty]


@pytest.fixture(scope="module")
def db(bindings: list[TableBinding], tenant_dir: Path) -> Iterator[SnapshotDatabase]:
    database = SnapshotDatabase(bindings, allowed_dir=str(tenant_dir), limits=QueryLimits())
    yield database
    database.close()


LIMITS = QueryLimits()


def rows(db: SnapshotDatabase, sql: str, params: list[object] | None = None) -> list[list[object]]:
    return db.execute(sql, params, LIMITS).rows


# -- snapshot views ----------------------------------------------------------------


def test_append_only_table_shows_every_row(db: SnapshotDatabase) -> None:
    result = db.execute("SELECT * FROM events ORDER BY id", None, LIMITS)
    assert result.columns == (("id", "INTEGER"), ("name", "VARCHAR"))
    assert result.rows == [[1, "a"], [2, "b"], [3, "c"]]
    assert result.truncated is False


def test_keyed_table_shows_latest_row_per_key_and_hides_deletes(db: SnapshotDatabase) -> None:
    # 1: inserted then deleted; 2: upserted; 3: deleted then upserted again.
    assert rows(db, "SELECT id, name, score FROM users ORDER BY id") == [
        [2, "bobby", "20.00"],
        [3, "cat again", "4.00"],
    ]


def test_system_columns_are_never_visible(db: SnapshotDatabase) -> None:
    result = db.execute("SELECT * FROM users", None, LIMITS)
    assert [name for name, _ in result.columns] == ["id", "name", "score"]
    with pytest.raises(DuckMeshError) as info:
        db.execute("SELECT _dm_token FROM events", None, LIMITS)
    assert info.value.error_code == "SQL_ERROR"


def test_schema_evolution_casts_old_files_and_fills_new_columns(db: SnapshotDatabase) -> None:
    result = db.execute("SELECT * FROM evolved ORDER BY id", None, LIMITS)
    assert result.columns == (
        ("id", "BIGINT"),
        ("v", "DOUBLE"),
        ("extra", "VARCHAR"),
        ("newest", "VARCHAR"),
    )
    assert result.rows == [[1, 0.5, None, None], [5_000_000_000, 1.25, "x", None]]


def test_empty_table_has_typed_columns_and_no_rows(db: SnapshotDatabase) -> None:
    result = db.execute("SELECT * FROM empty", None, LIMITS)
    assert result.columns == (("id", "BIGINT"), ("tags", "VARCHAR[]"))
    assert result.rows == []
    assert result.scanned_files == 0
    assert rows(db, "SELECT count(*) FROM empty") == [[0]]


def test_scanned_files_and_bytes_count_referenced_tables(
    db: SnapshotDatabase, bindings: list[TableBinding]
) -> None:
    by_name = {b.name: b for b in bindings}
    result = db.execute(
        "WITH u AS (SELECT id FROM users) SELECT count(*) FROM events JOIN u USING (id)",
        None,
        LIMITS,
    )
    assert result.scanned_files == 5
    assert result.scanned_bytes == by_name["events"].total_bytes + by_name["users"].total_bytes
    assert result.duration_ms > 0


def test_snapshot_with_no_tables_still_answers(tenant_dir: Path) -> None:
    database = SnapshotDatabase([], allowed_dir=str(tenant_dir), limits=LIMITS)
    try:
        assert rows(database, "SELECT 42") == [[42]]
    finally:
        database.close()


# -- parameters, limits, types -------------------------------------------------------


def test_positional_parameters_bind(db: SnapshotDatabase) -> None:
    assert rows(db, "SELECT name FROM events WHERE id = ?", [2]) == [["b"]]
    assert rows(db, "SELECT name FROM events WHERE id = $1 OR id = $2 ORDER BY 1", [1, 3]) == [
        ["a"],
        ["c"],
    ]


def test_wrong_parameter_count_is_sql_error(db: SnapshotDatabase) -> None:
    with pytest.raises(DuckMeshError) as info:
        db.execute("SELECT ?", [], LIMITS)
    assert info.value.error_code == "SQL_ERROR"


def test_row_limit_truncates_without_materialising_everything(db: SnapshotDatabase) -> None:
    limits = QueryLimits(row_limit=10)
    result = db.execute("SELECT * FROM range(1000000000000)", None, limits)
    assert result.rows == [[i] for i in range(10)]
    assert result.truncated is True
    exact = db.execute("SELECT * FROM range(10)", None, limits)
    assert len(exact.rows) == 10
    assert exact.truncated is False


def test_result_size_limit_truncates(db: SnapshotDatabase) -> None:
    limits = QueryLimits(max_result_bytes=10_000)
    result = db.execute("SELECT repeat('x', 100) AS s FROM range(1000)", None, limits)
    assert result.truncated is True
    assert 0 < len(result.rows) < 100
    assert len(json.dumps(result.rows)) <= 10_000


def test_result_values_are_json_ready(db: SnapshotDatabase) -> None:
    result = db.execute(
        """
        SELECT 12.50::DECIMAL(10,2) AS dec,
               0::DECIMAL(18,10) AS dec_zero,
               TIMESTAMP '2024-01-02 03:04:05.5' AS ts,
               TIMESTAMPTZ '2024-01-02 03:04:05+02:00' AS tstz,
               DATE '2024-01-02' AS d,
               TIME '10:11:12' AS t,
               INTERVAL 1 DAY + INTERVAL 90 MINUTE AS i,
               [1, 2, NULL] AS l,
               [1.5::DECIMAL(4,1)] AS dl,
               {'a': 1, 'b': 'x', 'c': TIMESTAMP '2024-01-01'} AS s,
               MAP {1: 'one'} AS m,
               [1, 2]::INTEGER[2] AS arr,
               '\\x00\\xFF'::BLOB AS b,
               '4f1b6c0e-7d52-4bb9-9d3b-2b6a4c3f1a10'::UUID AS u,
               '{"k": [1, true]}'::JSON AS j,
               'nan'::DOUBLE AS nan,
               'inf'::FLOAT AS inf,
               2.5::DOUBLE AS dbl,
               NULL AS nothing,
               NULL::TIMESTAMP AS null_ts,
               true AS flag
        """,
        None,
        LIMITS,
    )
    names = [name for name, _ in result.columns]
    value = dict(zip(names, result.rows[0], strict=True))
    assert value == {
        "dec": "12.50",
        "dec_zero": "0.0000000000",
        "ts": "2024-01-02T03:04:05.500000",
        "tstz": "2024-01-02T01:04:05Z",
        "d": "2024-01-02",
        "t": "10:11:12",
        "i": "P1DT1H30M",
        "l": [1, 2, None],
        "dl": ["1.5"],
        "s": {"a": 1, "b": "x", "c": "2024-01-01T00:00:00"},
        "m": {"1": "one"},
        "arr": [1, 2],
        "b": "AP8=",
        "u": "4f1b6c0e-7d52-4bb9-9d3b-2b6a4c3f1a10",
        "j": {"k": [1, True]},
        "nan": None,
        "inf": None,
        "dbl": 2.5,
        "nothing": None,
        "null_ts": None,
        "flag": True,
    }
    types = dict(result.columns)
    assert types["dec"] == "DECIMAL(10,2)"
    assert types["tstz"] == "TIMESTAMP WITH TIME ZONE"
    assert types["j"] == "JSON"
    json.dumps(result.rows, allow_nan=False)  # really JSON-ready


def test_sql_errors_carry_duckdb_message(db: SnapshotDatabase) -> None:
    with pytest.raises(DuckMeshError) as info:
        db.execute("SELECT no_such_column FROM events", None, LIMITS)
    assert info.value.error_code == "SQL_ERROR"
    assert "no_such_column" in info.value.message
    with pytest.raises(DuckMeshError) as info:
        db.execute("SELECT 'abc'::INTEGER", None, LIMITS)
    assert info.value.error_code == "SQL_ERROR"
    with pytest.raises(DuckMeshError) as info:
        db.execute("SELEC 1", None, LIMITS)
    assert info.value.error_code == "SQL_ERROR"


def test_errors_never_show_the_data_directory(tmp_path: Path) -> None:
    tenant_dir = tmp_path / "tenant-z"
    columns = [("id", "BIGINT")]
    files = [
        write_parquet(tenant_dir / f"{i}.parquet", columns, [(i, "insert", i)]) for i in (1, 2)
    ]
    table = binding("events", columns, files)
    database = SnapshotDatabase([table], allowed_dir=str(tenant_dir), limits=LIMITS)
    try:
        assert rows(database, "SELECT count(*) FROM events") == [[2]]
        Path(files[1]).unlink()  # e.g. removed behind the snapshot's back
        with pytest.raises(DuckMeshError) as info:
            database.execute("SELECT * FROM events", None, LIMITS)
        assert str(tenant_dir) not in info.value.message
        assert "<data>" in info.value.message
        assert str(tenant_dir) not in json.dumps(info.value.context)
    finally:
        database.close()


def test_unbound_table_is_an_error(db: SnapshotDatabase) -> None:
    with pytest.raises(DuckMeshError) as info:
        db.execute("SELECT * FROM orders", None, LIMITS)
    assert info.value.error_code == "SQL_ERROR"
    assert "orders" in info.value.message


# -- the sandbox ---------------------------------------------------------------------


REFUSED = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/passwd')",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT * FROM read_json_auto('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM '~/.bashrc'",
    "SELECT * FROM 'x.parquet'",
    "ATTACH '/tmp/duckmesh-attack.db' AS x",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET memory_limit = '10GB'",
    "SET enable_external_access = true",
    "RESET lock_configuration",
    "PRAGMA version",
    "CALL duckdb_settings()",
    "CREATE TABLE x (a INTEGER)",
    "CREATE MACRO m() AS 1",
    "INSERT INTO events VALUES (9, 'z')",
    "UPDATE events SET name = 'z'",
    "DELETE FROM events",
    "DROP VIEW events",
    "EXPORT DATABASE '/tmp/duckmesh-export'",
    "EXPLAIN SELECT 1",
    "DESCRIBE events",
    "SELECT 1; SELECT 2",
    "SELECT * FROM events; DROP VIEW events",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM duckdb_tables()",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM duckdb_views",
    "SELECT * FROM pg_settings",
    "SELECT * FROM main.events",
    "SELECT * FROM memory.main.events",
    "SELECT * FROM query('SELECT 1')",
    "SELECT * FROM query_table('events')",
    "SELECT current_setting('memory_limit')",
    "SELECT getenv('HOME')",
    "SELECT pg_get_viewdef(1)",
    "SELECT id FROM events WHERE name IN (SELECT content FROM read_text('/etc/passwd'))",
    "WITH x AS (SELECT * FROM read_parquet('/etc/passwd')) SELECT * FROM x",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_sandbox_refuses_and_changes_nothing(db: SnapshotDatabase, sql: str) -> None:
    with pytest.raises(DuckMeshError) as info:
        db.execute(sql, None, LIMITS)
    assert info.value.error_code == "SQL_REJECTED", info.value.message
    assert "refused" in info.value.message
    with pytest.raises(DuckMeshError):
        check_sql(sql)
    # Still the same snapshot, same settings.
    assert rows(db, "SELECT count(*) FROM events") == [[3]]
    settings = db._conn.execute(  # internal check: the configuration did not move
        "SELECT current_setting('memory_limit'), current_setting('enable_external_access')"
    ).fetchall()
    assert settings[0][1] is False
    assert not Path("/tmp/duckmesh-attack.db").exists()
    assert not Path("/tmp/duckmesh-export").exists()


def test_copy_to_file_is_refused_and_writes_nothing(db: SnapshotDatabase, tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    with pytest.raises(DuckMeshError) as info:
        db.execute(f"COPY (SELECT 1) TO '{target}'", None, LIMITS)
    assert info.value.error_code == "SQL_REJECTED"
    assert "COPY" in info.value.message
    assert not target.exists()


def test_other_tenants_files_are_unreachable(
    db: SnapshotDatabase, other_tenant_file: str, tenant_dir: Path
) -> None:
    for sql in (
        f"SELECT * FROM read_parquet('{other_tenant_file}')",
        f"SELECT * FROM '{other_tenant_file}'",
        f"SELECT * FROM parquet_scan('{tenant_dir}/../tenant-b/secret.parquet')",
    ):
        with pytest.raises(DuckMeshError) as info:
            db.execute(sql, None, LIMITS)
        assert info.value.error_code == "SQL_REJECTED"
    # Defence in depth: even SQL that skipped the checker could not read it,
    # nor re-open the configuration.
    raw = db._conn.cursor()
    try:
        with pytest.raises(duckdb.PermissionException):
            raw.execute(f"SELECT * FROM read_parquet('{other_tenant_file}')").fetchall()
        with pytest.raises(duckdb.PermissionException):
            raw.execute("SELECT * FROM read_text('/etc/passwd')").fetchall()
        with pytest.raises(duckdb.InvalidInputException):
            raw.execute("SET enable_external_access = true")
        with pytest.raises(duckdb.Error):
            raw.execute("INSTALL httpfs")
    finally:
        raw.close()


def test_ctes_may_reuse_names_but_unknown_tables_fail(db: SnapshotDatabase) -> None:
    assert rows(db, "WITH orders AS (SELECT 1 AS n) SELECT n FROM orders") == [[1]]
    assert rows(db, "SELECT count(*) FROM range(3), unnest([1, 2]), generate_series(1, 2)") == [
        [12]
    ]


# -- resources -----------------------------------------------------------------------


def test_timeout_interrupts_and_database_recovers(db: SnapshotDatabase) -> None:
    limits = QueryLimits(timeout_s=0.5)
    with pytest.raises(DuckMeshError) as info:
        db.execute("SELECT count(*) FROM range(100000000) a, range(100000) b", None, limits)
    assert info.value.error_code == "QUERY_TIMEOUT"
    assert rows(db, "SELECT 1") == [[1]]


def test_memory_limit_fails_fast_and_database_recovers(
    bindings: list[TableBinding], tenant_dir: Path
) -> None:
    limits = QueryLimits(memory_limit_mb=64, timeout_s=20)
    database = SnapshotDatabase(bindings, allowed_dir=str(tenant_dir), limits=limits)
    try:
        with pytest.raises(DuckMeshError) as info:
            database.execute(
                "SELECT count(DISTINCT s) FROM "
                "(SELECT i::VARCHAR || repeat('x', 50) AS s FROM range(50000000) t(i))",
                None,
                limits,
            )
        assert info.value.error_code == "QUERY_MEMORY_EXCEEDED"
        assert "64 MB" in info.value.message
        assert database.execute("SELECT count(*) FROM events", None, limits).rows == [[3]]
    finally:
        database.close()


def test_interrupt_cancels_running_queries(db: SnapshotDatabase) -> None:
    errors: list[DuckMeshError] = []
    started = threading.Event()

    def run() -> None:
        started.set()
        try:
            db.execute("SELECT count(*) FROM range(100000000) a, range(100000) b", None, LIMITS)
        except DuckMeshError as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    started.wait()
    for _ in range(50):
        if db._active:  # the query has its cursor
            break
        threading.Event().wait(0.01)
    threading.Event().wait(0.1)
    db.interrupt()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert [e.error_code for e in errors] == ["QUERY_TIMEOUT"]
    assert errors[0].context == {"reason": "cancelled"}
    assert rows(db, "SELECT 1") == [[1]]


def test_concurrent_queries_on_one_database(db: SnapshotDatabase) -> None:
    barrier = threading.Barrier(2)
    results: dict[int, object] = {}

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = db.execute(
                "SELECT sum(range) FROM range(20000000) UNION ALL SELECT count(*) FROM users",
                None,
                LIMITS,
            ).rows
        except Exception as exc:  # reported below
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    expected = [[sum(range(20_000_000))], [2]]
    assert results == {0: expected, 1: expected}


def test_close_lets_running_queries_finish(bindings: list[TableBinding], tenant_dir: Path) -> None:
    database = SnapshotDatabase(bindings, allowed_dir=str(tenant_dir), limits=LIMITS)
    outcome: list[object] = []

    def run() -> None:
        try:
            sql = "SELECT count(*) FROM range(3000) a, range(100000) b WHERE a.range + b.range > 0"
            outcome.append(database.execute(sql, None, LIMITS).rows)
        except DuckMeshError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    for _ in range(500):
        if database._active:
            break
        threading.Event().wait(0.001)
    database.close()
    worker.join(timeout=20)
    assert outcome == [[[3000 * 100000 - 1]]]
    with pytest.raises(DuckMeshError):
        database.execute("SELECT 1", None, LIMITS)


def test_closed_database_refuses_queries(bindings: list[TableBinding], tenant_dir: Path) -> None:
    database = SnapshotDatabase(bindings, allowed_dir=str(tenant_dir), limits=LIMITS)
    database.close()
    database.close()
    with pytest.raises(DuckMeshError):
        database.execute("SELECT 1", None, LIMITS)


def test_bindings_outside_the_data_dir_are_refused(
    tenant_dir: Path, other_tenant_file: str
) -> None:
    stolen = binding("stolen", [("secret", "VARCHAR")], [other_tenant_file])
    with pytest.raises(ValueError, match="not under the data dir"):
        SnapshotDatabase([stolen], allowed_dir=str(tenant_dir), limits=LIMITS)


# -- the checker on its own ----------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "VALUES (1), (2)",
        "WITH a AS (SELECT 1 AS x) SELECT * FROM a",
        "SELECT 1 UNION ALL SELECT 2 EXCEPT SELECT 3",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) FROM r",
        "FROM events SELECT id WHERE name LIKE 'a%' ORDER BY ALL LIMIT 3",
        "SELECT * FROM events PIVOT (count(*) FOR name IN ('a', 'b'))",
        "SELECT list_transform([1, 2], x -> x + 1), {'a': 1}.a, now()",
        "SELECT sum(id) OVER (ORDER BY id ROWS 1 PRECEDING) FROM events QUALIFY id > 1",
        "SELECT * FROM events e JOIN users u USING (id) WHERE EXISTS (SELECT 1 FROM users)",
        "SELECT $1::INTEGER, ?",
    ],
)
def test_check_sql_accepts_read_only_selects(sql: str) -> None:
    check_sql(sql)


def test_snapshots_are_schemas_of_one_database(
    bindings: list[TableBinding], tenant_dir: Path
) -> None:
    """Each snapshot keeps its own tables; dropping one leaves the others."""
    events = next(b for b in bindings if b.name == "events")
    database = SnapshotDatabase(allowed_dir=str(tenant_dir), limits=LIMITS)
    try:
        database.add_snapshot(1, [attrs.evolve(events, files=events.files[:1])])
        database.add_snapshot(2, [events])
        one = database.execute("select count(*) from events", None, LIMITS, 1).rows
        two = database.execute("select count(*) from events", None, LIMITS, 2).rows
        assert len(events.files) > 1
        assert 0 < one[0][0] < two[0][0]  # type: ignore[operator]
        with pytest.raises(ValueError, match="name the snapshot"):
            database.execute("select 1", None, LIMITS)
        database.drop_snapshot(1)
        assert not database.has_snapshot(1)
        with pytest.raises(SnapshotNotLoaded):
            database.execute("select count(*) from events", None, LIMITS, 1)
        assert database.execute("select count(*) from events", None, LIMITS, 2).rows == two
        # Another snapshot's schema cannot be named from user SQL.
        with pytest.raises(DuckMeshError):
            database.execute("select count(*) from snap_2.events", None, LIMITS, 2)
    finally:
        database.close()
