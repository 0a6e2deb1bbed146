"""Operator edges of the ``duckmesh`` command (issue 18): one-line errors with
exact exit statuses, the data-directory rule, JSON lists, roles, tenants enable.

Run in-process like tests/cli/test_cli.py (whose ``clean_env`` rule is repeated
here: no outside ``DUCKMESH_*``, data under tmp_path).
"""

from __future__ import annotations

import json
import tomllib
from datetime import datetime
from pathlib import Path

import pytest

from duckmesh import __version__
from duckmesh.config import NON_CONFIG_ENV, load_config
from tests.cli.helpers import run

pytestmark = pytest.mark.usefixtures("clean_env")


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --- configuration errors ------------------------------------------------------------


def test_a_typo_in_a_variable_name_is_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DUCKMESH_HTTP_PRT", "9090")
    code, out, err = run(capsys, "config", "show")
    assert (code, out) == (2, "")
    assert one_line(err) == (
        "duckmesh: configuration error: DUCKMESH_HTTP_PRT: unknown variable"
        " (did you mean DUCKMESH_HTTP_PORT?)"
    )


def test_the_known_variables_that_are_not_settings_are_accepted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in NON_CONFIG_ENV:
        if name != "DUCKMESH_CONFIG_FILE":  # (that one must name a file)
            monkeypatch.setenv(name, "x")
    code, _, err = run(capsys, "config", "show")
    assert (code, err) == (0, "")


@pytest.mark.parametrize(
    ("faults", "expected"),
    [
        ("bogus", "bad fault spec entry 'bogus'"),
        ("nowhere.at_all=raise", "unknown fault point 'nowhere.at_all'"),
        ("compaction.after_write=explode", "action must be one of"),
        ("compaction.after_write=raise", "set DUCKMESH_ENABLE_FAULTS=1"),  # valid, not enabled
    ],
)
def test_a_bad_or_disabled_fault_spec_is_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], faults: str, expected: str
) -> None:
    monkeypatch.setenv("DUCKMESH_FAULTS", faults)
    code, out, err = run(capsys, "config", "show")
    assert (code, out) == (2, "")
    line = one_line(err)
    assert line.startswith(f"duckmesh: configuration error: DUCKMESH_FAULTS={faults!r}: ")
    assert expected in line


def test_a_valid_fault_spec_with_faults_enabled_is_accepted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DUCKMESH_FAULTS", "compaction.after_write=raise:2")
    monkeypatch.setenv("DUCKMESH_ENABLE_FAULTS", "1")
    code, out, err = run(capsys, "config", "show")
    assert (code, err) == (0, "")
    assert tomllib.loads(out)["faults"] == "compaction.after_write=raise:2"


def test_an_unknown_toml_key_is_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    toml = tmp_path / "duckmesh.toml"
    toml.write_text("http_prt = 9090\n")
    monkeypatch.setenv("DUCKMESH_CONFIG_FILE", str(toml))
    code, out, err = run(capsys, "config", "show")
    assert (code, out) == (2, "")
    assert "unknown key 'http_prt'" in one_line(err)


def test_a_bad_flag_value_is_one_line_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "serve", "--port", "70000")
    assert (code, out) == (2, "")
    assert one_line(err) == "duckmesh: configuration error: --port=70000 is outside 1..65535"


# --- config show ------------------------------------------------------------------------


def test_config_show_is_valid_toml_that_loads_back_to_the_same_configuration(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("DUCKMESH_HTTP_HOST", 'odd "host"\\name\x7f')
    code, out, _ = run(capsys, "config", "show", "--data-dir", str(tmp_path / "elsewhere"))
    assert code == 0
    shown = tomllib.loads(out)
    assert shown["enable_faults"] is False
    assert shown["http_host"] == 'odd "host"\\name\x7f'
    assert shown["data_dir"] == str(tmp_path / "elsewhere")
    # Saved as a configuration file, the output is the same configuration.
    saved = tmp_path / "shown.toml"
    saved.write_text(out)
    assert load_config({"DUCKMESH_CONFIG_FILE": str(saved)}).redacted() == shown


def test_config_show_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "config", "show", "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["http_port"] == 8080
    assert shown["enable_faults"] is False


# --- data directory ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "list"],
        ["tenants", "list"],
        ["tenants", "create", "acme"],
        ["migrate", "status"],
        ["replay", "verify"],
    ],
)
def test_a_data_directory_without_a_catalog_is_refused_not_created(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]
) -> None:
    missing = tmp_path / "not-here"
    code, out, err = run(capsys, *argv, "--data-dir", str(missing))
    assert (code, out) == (2, "")
    line = one_line(err)
    assert line.startswith(f"duckmesh: no DuckMesh catalog in data directory '{missing}'")
    assert not missing.exists()
    # The variable is the same rule (the autouse fixture points it at tmp_path/data).
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert f"'{tmp_path / 'data'}'" in one_line(err)
    assert not (tmp_path / "data").exists()


# --- CLI surface ------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--version")
    assert (code, out, err) == (0, f"duckmesh {__version__}\n", "")


def test_negative_or_nan_seconds_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for value in ("-1", "0", "nan", "soon"):
        code, out, err = run(capsys, "bench", "--seconds", value)
        assert (code, out) == (2, ""), value
        assert one_line(err).startswith("duckmesh bench: error: argument --seconds: ")


def test_a_usage_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "keys", "create", "--tenant", "acme")
    assert (code, out) == (2, "")
    assert one_line(err) == (
        "duckmesh: error: keys create needs --tenant and at least one --role (see duckmesh --help)"
    )


def test_every_subcommand_has_a_description_and_keys_help_lists_the_roles(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for command in (
        "serve", "migrate", "replay", "tenants", "keys", "status", "bench", "config", "load",
        "demo",
    ):  # fmt: skip
        code, out, _ = run(capsys, command, "--help")
        assert code == 0
        assert "--data-dir" in out, command
        description = out.split("\n\n")[1]  # the paragraph after the usage
        assert description.endswith("."), command
        assert ":" not in description, command
    _, out, _ = run(capsys, "keys", "--help")
    for role in ("ingest_writer", "query_reader", "table_admin", "ops_admin"):
        assert role in out


@pytest.mark.usefixtures("catalog")
def test_comma_separated_and_repeated_roles_and_json_lists(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(capsys, "tenants", "create", "acme", "--name", "Acme")[0] == 0
    code, out, _ = run(
        capsys, "keys", "create", "--tenant", "acme", "--role", "query_reader,ingest_writer",
        "--role", "ops_admin",
    )  # fmt: skip
    assert code == 0
    key_id = out.splitlines()[0].removeprefix("key id: ")

    code, out, _ = run(capsys, "keys", "list", "--json")
    assert code == 0
    (key,) = json.loads(out)
    assert key["key_id"] == key_id
    assert key["roles"] == ["ingest_writer", "query_reader", "ops_admin"]
    assert key["state"] == "active"
    datetime.fromisoformat(key["created_at"])  # ISO 8601

    code, out, _ = run(capsys, "tenants", "list", "--json")
    assert code == 0
    (tenant,) = json.loads(out)
    assert (tenant["tenant_id"], tenant["name"], tenant["status"]) == ("acme", "Acme", "active")


@pytest.mark.usefixtures("catalog")
def test_a_disabled_tenant_can_be_enabled_again(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "tenants", "create", "acme")[0] == 0
    assert run(capsys, "tenants", "disable", "acme")[:2] == (0, "disabled tenant acme\n")
    code, out, _ = run(capsys, "tenants", "enable", "acme")
    assert (code, out) == (0, "enabled tenant acme\n")
    _, out, _ = run(capsys, "tenants", "list", "--json")
    assert json.loads(out)[0]["status"] == "active"
    # The projection is the log's: a replay agrees.
    assert run(capsys, "replay", "verify")[0] == 0
    code, _, err = run(capsys, "tenants", "enable", "nobody")
    assert code == 1
    assert one_line(err).startswith("duckmesh: NOT_FOUND:")
