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


def test_the_extra_links_open_the_viewer_results_and_dashboard_from_every_lifecycle_task() -> None:
    """The "View" and "Results" extra links name the DAG run (the viewer and the API find its job), its ids
    escaped; "Dashboard" opens the storage dashboard. Every lifecycle task carries all three but the two plain
    ``@task`` functions (prepare, mark_failed), and the provider info names each (Airflow imports them)."""
    from urllib.parse import parse_qs, urlsplit

    from airflow.sdk import BaseOperatorLink
    from airflow.sdk.types import TaskInstanceKey

    from e2e3d_provider.api.app import create_app
    from e2e3d_provider.links import DashboardLink, ResultsLink, ViewerLink
    from tests.helpers import load_repo_dag

    declared = e2e3d_provider.get_provider_info()["extra-links"]  # what Airflow's providers manager imports
    for name in declared:
        module, _, attr = name.rpartition(".")
        assert issubclass(getattr(__import__(module, fromlist=[attr]), attr), BaseOperatorLink), name
    links = {"View": ViewerLink(), "Results": ResultsLink(), "Dashboard": DashboardLink()}
    assert {n.rpartition(".")[2] for n in declared} == {type(link).__name__ for link in links.values()}
    run_id = "manual__2026-12-05T00:00:00+00:00 & more"
    key = TaskInstanceKey("e2e3d_reconstruction", "right_size", run_id)
    urls = {name: urlsplit(link.get_link(None, ti_key=key)) for name, link in links.items()}  # type: ignore[arg-type]
    for name in ("View", "Results"):
        url = urls[name].geturl()
        assert " " not in url and "+" not in url and "&more" not in url, url
    assert urls["View"].path == "/e2e3d/viewer"
    assert parse_qs(urls["View"].query) == {"dag_id": ["e2e3d_reconstruction"], "run_id": [run_id]}
    assert urls["Results"].path == "/e2e3d/api/v1/jobs"
    assert parse_qs(urls["Results"].query) == {"dag_id": ["e2e3d_reconstruction"], "run_id": [run_id], "limit": ["1"]}
    assert urls["Dashboard"].geturl() == "/e2e3d/dashboard"
    # the pages exist in the plugin's app (mounted at /e2e3d)
    paths = {getattr(route, "path", None) for route in create_app().routes}
    assert {"/viewer", "/dashboard", "/api/v1/jobs"} <= paths, sorted(p for p in paths if p)

    dag = load_repo_dag("e2e3d_reconstruction.py", "e2e3d_reconstruction")
    for name in links:
        without = {t.task_id for t in dag.tasks if name not in {link.name for link in t.operator_extra_links}}
        assert without == {"prepare", "mark_failed"}, (name, without)


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
