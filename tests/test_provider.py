"""Registration with Airflow, packaging conventions and lint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

import e2e3d_provider

ROOT = Path(__file__).resolve().parents[1]


def test_provider_info_matches_airflows_schema() -> None:
    import airflow

    schema_path = Path(airflow.__file__).parent / "provider_info.schema.json"
    info = e2e3d_provider.get_provider_info()
    jsonschema.validate(info, json.loads(schema_path.read_text()))
    assert info["package-name"] == "e2e3d-provider"
    for section in ("hooks", "operators", "sensors", "triggers"):
        for module in info[section][0]["python-modules"]:
            __import__(module)


def test_the_view_link_opens_the_viewer_on_the_task_s_dag_run_from_every_lifecycle_task() -> None:
    """The "View" extra link names the DAG run (the viewer asks the API for its job), its ids escaped; every
    lifecycle task carries it but the two plain ``@task`` functions (prepare, mark_failed)."""
    from urllib.parse import parse_qs, urlsplit

    from airflow.sdk import BaseOperatorLink
    from airflow.sdk.types import TaskInstanceKey

    from e2e3d_provider.links import ViewerLink
    from tests.helpers import load_repo_dag

    for name in e2e3d_provider.get_provider_info()["extra-links"]:  # what Airflow's providers manager imports
        module, _, attr = name.rpartition(".")
        assert issubclass(getattr(__import__(module, fromlist=[attr]), attr), BaseOperatorLink), name
    run_id = "manual__2026-12-05T00:00:00+00:00 & more"
    link = ViewerLink().get_link(None, ti_key=TaskInstanceKey("e2e3d_reconstruction", "right_size", run_id))  # type: ignore[arg-type]
    assert link.startswith("/e2e3d/viewer?") and " " not in link and "+" not in link and "&more" not in link, link
    assert parse_qs(urlsplit(link).query) == {"dag_id": ["e2e3d_reconstruction"], "run_id": [run_id]}

    dag = load_repo_dag("e2e3d_reconstruction.py", "e2e3d_reconstruction")
    without = {t.task_id for t in dag.tasks if "View" not in {link.name for link in t.operator_extra_links}}
    assert without == {"prepare", "mark_failed"}, without


@pytest.mark.integration  # runs processes of its own
def test_airflow_providers_list_shows_the_provider(tmp_path: Path) -> None:
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path))
    airflow_cli = shutil.which("airflow", path=str(Path(sys.executable).parent)) or "airflow"
    result = subprocess.run(
        [airflow_cli, "providers", "list", "-o", "json"], capture_output=True, text=True, env=env, timeout=180
    )
    assert result.returncode == 0, result.stderr[-2000:]
    listed = {p["package_name"]: p for p in json.loads(result.stdout)}
    assert listed["e2e3d-provider"]["version"] == e2e3d_provider.__version__


def test_hooks_follow_airflow_conventions() -> None:
    from e2e3d_provider.hooks.metadata import MetadataHook
    from e2e3d_provider.hooks.storage import StorageHook

    assert StorageHook.default_conn_name == "minio_default" and StorageHook.conn_type == "aws"
    assert MetadataHook.default_conn_name == "e2e3d_metadata" and MetadataHook.conn_type == "postgres"
    # building a hook opens nothing: DAG files are parsed constantly
    hook = StorageHook("does-not-exist")
    assert "client" not in hook.__dict__ and "settings" not in hook.__dict__


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a tool installed beside this interpreter (the dev extra) from the repository root."""
    tool = shutil.which(name, path=str(Path(sys.executable).parent)) or name
    return subprocess.run([tool, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_ruff_is_clean() -> None:
    result = run_tool("ruff", "check", str(ROOT))
    assert result.returncode == 0, result.stdout[-4000:]


def test_ruff_format_is_clean() -> None:
    result = run_tool("ruff", "format", "--check", str(ROOT))
    assert result.returncode == 0, result.stdout[-4000:]


def test_mypy_is_clean_over_the_whole_package() -> None:
    result = run_tool("mypy")  # the files and strictness are in pyproject.toml [tool.mypy]
    assert result.returncode == 0, result.stdout[-4000:]


@pytest.mark.integration  # runs processes of its own
def test_airflow_plugins_lists_the_results_api(tmp_path: Path) -> None:
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path), AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"))
    airflow_cli = shutil.which("airflow", path=str(Path(sys.executable).parent)) or "airflow"
    result = subprocess.run(
        [airflow_cli, "plugins", "-o", "json"], capture_output=True, text=True, env=env, timeout=180
    )
    assert result.returncode == 0, result.stderr[-2000:]
    listed = json.loads(result.stdout)
    plugins = {p["name"]: p for p in listed}
    # once: the plugins/ file stands down when the package is installed (other providers' plugins may follow)
    assert [p["name"] for p in listed].count("e2e3d") == 1
    assert plugins["e2e3d"]["fastapi_apps"][0]["url_prefix"] == "/e2e3d"
