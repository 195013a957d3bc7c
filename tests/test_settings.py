"""Settings in one place: every option the package reads is declared (core/settings.py), Airflow knows the
declared defaults, and ``e2e3d config`` checks a value before anything is stored."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import e2e3d_provider
from e2e3d_provider.cli import main
from e2e3d_provider.core import settings
from e2e3d_provider.core.settings import (
    AIRFLOW_OPTIONS,
    ENVIRONMENT,
    PLATFORM_KEYS,
    SETTINGS,
    coerce,
    validate_platform,
)

PACKAGE = Path(e2e3d_provider.__file__).parent
#: a read of an [e2e3d] option: conf.get / getint / getfloat / getboolean ... of the section, then the option's name
OPTION_READ = re.compile(
    r"conf\.(?:get\w*|has_option)\(\s*(?:\"e2e3d\"|'e2e3d'|CONFIG_SECTION|SECTION)\s*,\s*[\"'](\w+)[\"']"
)


def options_read(root: Path) -> set[str]:
    """Every ``[e2e3d]`` option a module under ``root`` reads from Airflow's configuration."""
    return {name for path in root.rglob("*.py") for name in OPTION_READ.findall(path.read_text())}


def platform_keys_named(root: Path) -> set[str]:
    """Every ``e2e3d.config`` key the package names: the module constants ``CONFIG_* = "key"`` and the string
    literals passed to ``get_config``/``set_config``/``delete_config``."""
    found = set()
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            named = isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id.startswith("CONFIG_") for t in node.targets
            )
            if named and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                found.add(node.value.value)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("get_config", "set_config", "delete_config")
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.add(node.args[0].value)
    return found - {"e2e3d"}  # the Airflow section's name, where a module still spells it in a CONFIG_ constant


def test_every_option_the_package_reads_is_declared_to_airflow_and_nothing_more() -> None:
    read = options_read(PACKAGE)
    declared = set(e2e3d_provider.get_provider_info()["config"]["e2e3d"]["options"])
    assert read == declared == {s.name for s in AIRFLOW_OPTIONS}, (sorted(read - declared), sorted(declared - read))
    # the check sees a new, undeclared read (its regex is not vacuous)
    planted = 'x = conf.getint(\n    "e2e3d", "brand_new_option", fallback=3)'
    assert OPTION_READ.findall(planted) == ["brand_new_option"]


def test_every_platform_key_the_package_names_is_declared() -> None:
    assert platform_keys_named(PACKAGE) == {s.name for s in PLATFORM_KEYS}


def environment_variables_named(root: Path) -> set[str]:
    """Every ``E2E3D_*`` variable the package spells as a string of its own (``os.environ.get("E2E3D_X")`` or a
    constant naming it), but the test suite's (``E2E3D_TEST_*``, which ``e2e3d stack env`` exports for it)."""
    return {
        node.value
        for path in root.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"E2E3D_[A-Z0-9_]+", node.value)
        and not node.value.startswith("E2E3D_TEST_")
    }


def test_every_environment_variable_the_package_reads_is_declared() -> None:
    assert environment_variables_named(PACKAGE) == {s.name for s in ENVIRONMENT}


def test_the_declared_defaults_are_the_ones_the_code_falls_back_on() -> None:
    from e2e3d_provider.hooks import DEFAULT_METADATA_CONN_ID, ROLE_CONN_IDS
    from e2e3d_provider.lifecycle.maintenance import steps
    from e2e3d_provider.lifecycle.worker.host_sweep import ScratchBounds

    assert settings.default("minio_conn_id") == ROLE_CONN_IDS["api"]
    assert settings.default("metadata_conn_id") == DEFAULT_METADATA_CONN_ID
    bounds = ScratchBounds()
    assert (bounds.cache_max_bytes, bounds.cache_max_age_hours, bounds.every_seconds) == (
        settings.default("cache_max_bytes"),
        settings.default("cache_max_age_hours"),
        settings.default("sweep_every_seconds"),
    )
    assert {key: SETTINGS[key].default for key in steps.DEFAULTS} == steps.DEFAULTS


def test_each_declaration_is_complete_and_its_default_a_valid_value() -> None:
    for item in SETTINGS.values():
        assert item.description.strip() and item.description.rstrip().endswith("."), item.name
        assert item.type in ("string", "integer", "float", "boolean", "json"), item.name
        if item.scope == "airflow":
            assert item.type in settings.AIRFLOW_TYPES and not item.read_only, item.name
        assert item.check(item.default) == item.default, item.name
        if item.default is not None and item.type != "json":  # what Airflow's parser holds reads back the same
            assert coerce(item, settings.render(item.default)) == item.default, item.name
        if item.example is not None and not item.read_only:
            item.check(item.example)


@pytest.mark.parametrize(
    ("key", "value", "complaint"),
    [
        ("output_retention_days", -1, "at least 0"),
        ("output_retention_days", "30", "a finite number"),
        ("output_retention_days", float("nan"), "a finite number"),
        ("scrub_max_bytes", 1.5, "whole number"),
        ("scrub_max_bytes", True, "whole number"),
        ("temp_max_age_hours", None, "cannot be null"),
        ("storage_capacity_bytes", 0, "at least 1"),
        ("rightsize", [0.5], "JSON object"),
        ("retention_days", 30, "has no key 'retention_days'"),
        ("cache_max_bytes", 10, "is an Airflow option"),
    ],
)
def test_a_platform_value_is_checked_before_it_is_stored(key: str, value: object, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        validate_platform(key, value)


def test_platform_values_are_normalised() -> None:
    assert validate_platform("output_retention_days", 45) == 45  # stays whole: shown and stored as 45
    assert validate_platform("scrub_max_bytes", 1e12) == 10**12
    assert validate_platform("storage_capacity_bytes", None) is None
    assert validate_platform("scrub_cursor", ["job", "stamp"]) == ["job", "stamp"]
    assert coerce(SETTINGS["scrub_max_bytes"], "10_000") == 10_000
    assert coerce(SETTINGS["rightsize"], '{"web_quality": 80}') == {"web_quality": 80}
    with pytest.raises(ValueError, match="takes JSON"):
        coerce(SETTINGS["rightsize"], "{web_quality: 80}")
    with pytest.raises(ValueError, match="dotted path"):
        coerce(SETTINGS["volume_vacuum"], "not a path")
    assert coerce(SETTINGS["volume_vacuum"], "") == ""


def test_airflow_answers_the_declared_default_without_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider's declaration is what Airflow falls back on: a read with no ``fallback=`` gets the default."""
    from airflow.configuration import conf

    for item in AIRFLOW_OPTIONS:
        monkeypatch.delenv(item.env_var or "", raising=False)
    assert conf.getint("e2e3d", "cache_max_bytes") == settings.default("cache_max_bytes")
    assert conf.getfloat("e2e3d", "metadata_retry_deadline") == settings.default("metadata_retry_deadline")
    assert conf.get("e2e3d", "volume_vacuum") == ""
    monkeypatch.setenv("AIRFLOW__E2E3D__CACHE_MAX_BYTES", "1024")
    assert conf.getint("e2e3d", "cache_max_bytes") == 1024


@pytest.mark.integration  # runs processes of its own
def test_airflow_config_list_shows_every_option_with_its_default(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__E2E3D__")}
    env.update(AIRFLOW_HOME=str(tmp_path), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    airflow_cli = shutil.which("airflow", path=str(Path(sys.executable).parent)) or "airflow"
    result = subprocess.run(
        [airflow_cli, "config", "list", "--section", "e2e3d", "--show-values", "--include-descriptions"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    shown = dict(re.findall(r"^(\w+) = (.*)$", result.stdout, re.MULTILINE))
    assert shown == {item.name: settings.render(item.default) for item in AIRFLOW_OPTIONS}, result.stdout
    for item in AIRFLOW_OPTIONS:
        assert f"# {item.description}" in result.stdout, item.name


def test_the_docs_table_lists_every_setting_of_its_scope() -> None:
    for scope, items in (("airflow", AIRFLOW_OPTIONS), ("platform", PLATFORM_KEYS), ("environment", ENVIRONMENT)):
        table = settings.markdown_table(scope)
        rows = [line for line in table.splitlines() if line.startswith("| `")]
        assert [row.split("`")[1] for row in rows] == [item.name for item in items]
        assert all(row.count(" | ") == table.splitlines()[0].count(" | ") for row in rows), table
    assert "`AIRFLOW__E2E3D__VOLUME_VACUUM`" in settings.markdown_table("airflow")
    assert "Read-only" in settings.markdown_table("platform")
    page = settings.markdown_page()
    assert page.startswith("# Configuration\n") and all(f"| `{name}` |" in page for name in SETTINGS)


# --- e2e3d config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["set", "output_retention_days", "-1"], "must be at least 0"),
        (["set", "output_retention_days", "soon"], "takes a number"),
        (["set", "rightsize", '{"web_quality": 500}'], "web_quality"),
        (["set", "rightsize", '{"no_such_field": 1}'], "unknown right-sizing setting"),
        (["set", "scrub_cursor", "null"], "read-only"),
        (["set", "no_such_key", "1"], "no setting 'no_such_key'"),
        (["get", "no_such_key"], "no setting 'no_such_key'"),
        (["set", "cache_max_bytes", "ten"], "takes a whole number"),
    ],
)
def test_config_refuses_a_bad_key_or_value_with_exit_1(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before any connection is opened (no database here: the connection id names none)."""
    assert main(["config", *argv, "--metadata-conn-id", "no_such_connection"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("e2e3d: error: ") and complaint in err, err


def test_config_set_of_an_airflow_option_prints_the_line_that_sets_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "set", "cache_max_bytes", "1e11", "--metadata-conn-id", "no_such_connection"]) == 1
    out, err = capsys.readouterr()
    assert out == "AIRFLOW__E2E3D__CACHE_MAX_BYTES=100000000000\n" and "Airflow option" in err


def test_config_list_and_get_of_the_airflow_options(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for item in AIRFLOW_OPTIONS:
        monkeypatch.delenv(item.env_var or "", raising=False)
    monkeypatch.setenv("AIRFLOW__E2E3D__SWEEP_EVERY_SECONDS", "30")
    assert main(["config", "list", "--scope", "airflow", "--json"]) == 0
    listed = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert list(listed) == [item.name for item in AIRFLOW_OPTIONS]
    assert listed["sweep_every_seconds"]["value"] == 30 and listed["sweep_every_seconds"]["source"] == "env"
    assert listed["cache_max_bytes"]["value"] == listed["cache_max_bytes"]["default"] == 50 * 1024**3
    assert listed["cache_max_bytes"]["source"] in ("default", "airflow.cfg")  # Airflow writes its defaults there
    assert main(["config", "get", "sweep_every_seconds"]) == 0
    assert capsys.readouterr().out == "30\n"
    assert main(["config", "list", "--scope", "airflow"]) == 0
    text = capsys.readouterr().out
    assert all(item.name in text for item in AIRFLOW_OPTIONS) and "env" in text


def test_config_shows_an_environment_variable_and_will_not_set_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("E2E3D_DATA_ROOT", raising=False)
    assert main(["config", "get", "E2E3D_DATA_ROOT"]) == 0
    assert capsys.readouterr().out == "/app/data\n"
    monkeypatch.setenv("E2E3D_DATA_ROOT", "/srv/data")
    assert main(["config", "list", "--scope", "environment", "--json"]) == 0
    listed = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert list(listed) == [item.name for item in ENVIRONMENT]
    assert listed["E2E3D_DATA_ROOT"]["value"] == "/srv/data" and listed["E2E3D_DATA_ROOT"]["source"] == "env"
    assert main(["config", "set", "E2E3D_DATA_ROOT", "/elsewhere"]) == 1
    out, err = capsys.readouterr()
    assert out == "E2E3D_DATA_ROOT=/elsewhere\n" and "environment variable" in err


def test_config_set_get_list_unset_round_trip_in_postgresql(metadata, capsys: pytest.CaptureFixture[str]) -> None:
    key = "telemetry_retention_days"
    metadata.delete_config(key)
    try:
        assert main(["config", "get", key]) == 0
        assert capsys.readouterr().out == "90\n"  # not stored: the declared default
        assert main(["config", "set", key, "45"]) == 0
        assert "-> 45" in capsys.readouterr().out
        assert main(["config", "get", key]) == 0
        assert capsys.readouterr().out == "45\n"
        assert metadata.get_config(key) == 45  # what the maintenance DAG reads

        assert main(["config", "set", key, "60", "--dry-run"]) == 0
        assert "dry run" in capsys.readouterr().out
        assert metadata.get_config(key) == 45  # nothing written
        assert main(["config", "set", key, "-5"]) == 1
        assert metadata.get_config(key) == 45

        with metadata.transaction() as cur:  # a row stored before the keys were checked (or by hand)
            cur.execute("INSERT INTO e2e3d.config (key, value) VALUES ('retention_days', '30')")
        assert main(["config", "list", "--scope", "platform", "--json"]) == 0
        listed = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
        assert listed[key]["value"] == 45 and listed[key]["source"] == "e2e3d.config" and listed[key]["updated_at"]
        assert listed["scrub_max_bytes"]["read_only"] is False and listed["scrub_cursor"]["read_only"] is True
        assert listed["retention_days"]["source"] == "undeclared"  # shown, so a stale or mistyped key is seen

        assert main(["config", "unset", key, "--dry-run"]) == 0
        assert metadata.get_config(key) == 45
        assert main(["config", "unset", key]) == 0
        assert metadata.get_config(key, "absent") == "absent"
    finally:
        metadata.delete_config(key)
        metadata.delete_config("retention_days")


def test_the_hook_refuses_a_bad_value_and_writes_nothing(metadata) -> None:
    before = metadata.list_config()
    with pytest.raises(ValueError, match="must be at least 0"):
        metadata.set_config("output_retention_days", -1)
    with pytest.raises(ValueError, match="has no key 'output_retention_day'"):
        metadata.set_config("output_retention_day", 30)  # a typo: stored, nothing would ever read it
    assert metadata.list_config() == before
