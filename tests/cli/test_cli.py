"""The ``duckmesh`` command, run in-process on the test's catalog database.

``main([...])`` is called directly with ``DUCKMESH_*`` set through
monkeypatch; stdout and stderr come from capsys.
"""

from __future__ import annotations

import psycopg
import pytest

from duckmesh import migrations
from duckmesh.cli.main import main
from tests.cli.helpers import run

SECRET_KEY = "dmk_XJIwWeJtJmRs6TK1RO7By4DMWvi9tY2DlTa8ezTf"  # strong enough to be accepted


pytestmark = pytest.mark.usefixtures("clean_env")


# --- config ----------------------------------------------------------------------


def test_config_show_redacts_the_bootstrap_key_and_a_uri_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DUCKMESH_BOOTSTRAP_API_KEY", SECRET_KEY)
    monkeypatch.setenv("DUCKMESH_CATALOG_DSN", "postgresql://duck:hunter2pw@db.example:5432/cat")
    monkeypatch.setenv("DUCKMESH_HTTP_PORT", "9090")
    code, out, err = run(capsys, "config", "show")
    assert code == 0
    assert err == ""
    assert SECRET_KEY not in out
    assert "hunter2pw" not in out
    assert 'bootstrap_api_key = "<redacted>"' in out
    assert 'catalog_dsn = "postgresql://duck:***@db.example:5432/cat"' in out
    assert "http_port = 9090" in out


def test_config_show_redacts_a_key_value_dsn_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DUCKMESH_CATALOG_DSN", "host=db dbname=cat user=duck password=hunter2pw")
    code, out, _ = run(capsys, "config", "show")
    assert code == 0
    assert "hunter2pw" not in out
    assert 'catalog_dsn = "host=db dbname=cat user=duck password=***"' in out


def test_config_show_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "config", "show")
    assert code == 0
    keys = [line.split(" = ")[0] for line in out.splitlines()]
    assert "data_dir" in keys
    assert "bootstrap_api_key" in keys
    assert len(keys) == len(set(keys)) > 20
    assert 'bootstrap_api_key = ""' in out  # nothing to hide


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DUCKMESH_HTTP_PORT", "abc"),
        ("DUCKMESH_HTTP_PORT", "70000"),
        ("DUCKMESH_LOG_FORMAT", "xml"),
        ("DUCKMESH_ENABLE_FAULTS", "maybe"),
        ("DUCKMESH_BOOTSTRAP_API_KEY", "short"),
    ],
)
def test_a_bad_value_exits_2_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    code, out, err = run(capsys, "config", "show")
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1
    assert variable in lines[0]
    if variable == "DUCKMESH_BOOTSTRAP_API_KEY":
        assert value not in lines[0]  # a (bad) secret is still not echoed


def test_every_command_checks_the_configuration_first(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DUCKMESH_HTTP_PORT", "abc")
    for argv in (["migrate", "status"], ["tenants", "list"], ["replay", "verify"]):
        code, _, err = run(capsys, *argv)
        assert code == 2
        assert "DUCKMESH_HTTP_PORT" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        [],
        ["nonsense"],
        ["tenants", "create"],
        ["keys", "create", "--tenant", "acme"],
        ["keys", "revoke"],
        ["migrate", "sideways"],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2, argv
        capsys.readouterr()


# --- migrate ---------------------------------------------------------------------


@pytest.mark.usefixtures("catalog")
def test_migrate_status_down_up_round_trip(capsys: pytest.CaptureFixture[str], dsn: str) -> None:
    available = migrations.available()
    code, out, _ = run(capsys, "migrate", "status")
    assert code == 0
    assert out.splitlines() == [f"{m.version:04d} {m.name:<30} applied" for m in available]

    code, out, _ = run(capsys, "migrate", "up")
    assert code == 0
    assert out.strip() == "applied 0 migration(s)"

    code, out, _ = run(capsys, "migrate", "down", "--steps", str(len(available)))
    assert code == 0
    assert out.splitlines()[0] == f"reverted {len(available)} migration(s)"
    code, out, _ = run(capsys, "migrate", "status")
    assert all(line.endswith("pending") for line in out.splitlines())
    with psycopg.connect(dsn) as conn:
        gone = conn.execute("SELECT to_regclass('event_log'), to_regclass('tenant')").fetchone()
        assert gone == (None, None)

    code, out, _ = run(capsys, "migrate", "up")
    assert code == 0
    assert out.splitlines()[0] == f"applied {len(available)} migration(s)"
    code, out, _ = run(capsys, "migrate", "status")
    assert all(line.endswith("applied") for line in out.splitlines())

    # The schema works again: commands, projections and replay.
    assert run(capsys, "tenants", "create", "acme")[0] == 0
    code, out, _ = run(capsys, "tenants", "list")
    assert code == 0
    assert out.splitlines()[1].startswith("acme")
    assert run(capsys, "replay", "verify")[0] == 0


@pytest.mark.usefixtures("catalog")
def test_migrate_down_one_step(capsys: pytest.CaptureFixture[str]) -> None:
    newest = migrations.available()[-1]
    code, out, _ = run(capsys, "migrate", "down")
    assert code == 0
    assert out.splitlines() == ["reverted 1 migration(s)", f"  {newest.version:04d} {newest.name}"]
    code, out, _ = run(capsys, "migrate", "status")
    assert out.splitlines()[-1].endswith("pending")
    assert run(capsys, "migrate", "up")[0] == 0


# --- tenants and keys ---------------------------------------------------------------


@pytest.mark.usefixtures("catalog")
def test_tenants_create_list_disable(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "tenants", "create", "acme", "--name", "Acme")
    assert (code, out.strip()) == (0, "created tenant acme")
    assert run(capsys, "tenants", "create", "globex")[0] == 0

    code, out, _ = run(capsys, "tenants", "list")
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["TENANT_ID", "NAME", "STATUS", "CREATED_AT"]
    rows = [line.split() for line in lines]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("acme", "Acme", "active"),
        ("globex", "globex", "active"),
    ]

    code, out, _ = run(capsys, "tenants", "disable", "acme")
    assert (code, out.strip()) == (0, "disabled tenant acme")
    _, out, _ = run(capsys, "tenants", "list")
    assert out.splitlines()[1].split()[2] == "disabled"


@pytest.mark.usefixtures("catalog")
def test_tenant_errors_exit_1_with_the_error_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "tenants", "create", "acme")[0] == 0
    code, out, err = run(capsys, "tenants", "create", "acme")
    assert code == 1
    assert out == ""
    assert err.startswith("duckmesh: TENANT_EXISTS:")
    code, _, err = run(capsys, "tenants", "create", "Not Valid")
    assert code == 1
    assert err.startswith("duckmesh: VALIDATION_FAILED:")
    code, _, err = run(capsys, "tenants", "disable", "nobody")
    assert code == 1
    assert err.startswith("duckmesh: NOT_FOUND:")


@pytest.mark.usefixtures("catalog")
def test_keys_create_list_revoke(capsys: pytest.CaptureFixture[str], dsn: str) -> None:
    assert run(capsys, "tenants", "create", "acme")[0] == 0
    code, out, _ = run(
        capsys,
        "keys",
        "create",
        "--tenant",
        "acme",
        "--role",
        "query_reader",
        "--role",
        "ingest_writer",
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("key id: ")
    assert lines[1].startswith("API key (shown once): dmk_")
    key_id = lines[0].removeprefix("key id: ")
    plaintext = lines[1].removeprefix("API key (shown once): ")
    assert len(plaintext) > 40

    code, out, _ = run(capsys, "keys", "list")
    assert code == 0
    assert plaintext not in out  # shown once, by create, never again
    header, row = out.splitlines()
    assert header.split() == ["KEY_ID", "TENANT_ID", "ROLES", "CREATED_AT", "STATE"]
    cells = row.split()
    assert cells[:3] + cells[-1:] == [key_id, "acme", "ingest_writer,query_reader", "active"]
    code, out, _ = run(capsys, "keys", "list", "--tenant", "acme")
    assert out.splitlines()[1].split()[0] == key_id
    code, out, _ = run(capsys, "keys", "list", "--tenant", "other")
    assert (code, out.splitlines()[1:]) == (0, [])

    code, out, _ = run(capsys, "keys", "revoke", key_id)
    assert (code, out.strip()) == (0, f"revoked {key_id}")
    _, out, _ = run(capsys, "keys", "list")
    assert out.split()[-1] == "revoked"
    assert plaintext not in out

    # The plaintext never reached the catalog.
    with psycopg.connect(dsn) as conn:
        dump = conn.execute(
            "SELECT string_agg(payload::text || metadata::text, '') FROM event_log"
        ).fetchone()
        assert dump is not None
        assert plaintext not in dump[0]
        (actors,) = conn.execute(
            "SELECT array_agg(DISTINCT metadata->>'actor') FROM event_log"
        ).fetchone() or ([],)
        assert actors == ["cli"]


@pytest.mark.usefixtures("catalog")
def test_key_errors_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "keys", "create", "--tenant", "nobody", "--role", "query_reader")
    assert code == 1
    assert err.startswith("duckmesh: NOT_FOUND:")
    assert run(capsys, "tenants", "create", "acme")[0] == 0
    code, _, err = run(capsys, "keys", "create", "--tenant", "acme", "--role", "root")
    assert code == 1
    assert err.startswith("duckmesh: VALIDATION_FAILED:")
    code, _, err = run(capsys, "keys", "revoke", "0123456789abcdef")
    assert code == 1
    assert err.startswith("duckmesh: NOT_FOUND:")


@pytest.mark.usefixtures("catalog")
@pytest.mark.parametrize("steps", ["0", "-1"])
def test_migrate_down_needs_a_positive_step_count(
    capsys: pytest.CaptureFixture[str], steps: str
) -> None:
    code, out, err = run(capsys, "migrate", "down", f"--steps={steps}")
    assert code == 1
    assert out == ""
    assert "BAD_REQUEST" in err
    _, out, _ = run(capsys, "migrate", "status")
    assert all(line.endswith("applied") for line in out.splitlines())
