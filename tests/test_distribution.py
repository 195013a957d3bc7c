"""The package as users receive it: the wheel and the sdist carry everything, and the installed wheel
works from outside any checkout (every module imports, the CLI, Airflow sees the provider and its
plugin, the example DAGs are there to use).

The suite itself runs against the installed wheel (see ``conftest._package_under_test``); these tests
check what the suite cannot see from inside: the built files against the source tree, and a fresh
virtual environment with the wheel installed the way a user installs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import e2e3d_provider
from tests.conftest import EDITABLE
from tests.helpers import REPO

pytestmark = pytest.mark.integration  # builds the wheel and the sdist, runs fresh venvs and Airflow's CLI

SOURCE = REPO / "e2e3d_provider"
BIN = Path(sys.executable).parent


def source_files() -> set[str]:
    """Every file of the package in the source tree (code, sample data, static files, example DAGs)."""
    return {
        str(p.relative_to(REPO))
        for p in SOURCE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist, and the wheel built from that sdist, as ``python -m build`` makes a release."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_every_package_folder_is_a_package() -> None:
    folders = [
        p
        for p in SOURCE.rglob("*")
        if p.is_dir() and "__pycache__" not in p.parts and any(p.glob("*.py")) and not (p / "__init__.py").exists()
    ]
    assert not folders, f"folders of modules without __init__.py (left out of the wheel): {folders}"


def test_the_wheel_carries_the_whole_package_and_the_license(built: dict[str, Path]) -> None:
    names = set(zipfile.ZipFile(built["wheel"]).namelist())
    assert source_files() <= names, sorted(source_files() - names)
    version = e2e3d_provider.__version__
    info = f"e2e3d_provider-{version}.dist-info"
    assert {f"{info}/licenses/LICENSE", f"{info}/entry_points.txt", f"{info}/METADATA"} <= names
    entry_points = zipfile.ZipFile(built["wheel"]).read(f"{info}/entry_points.txt").decode()
    for line in (
        "provider_info = e2e3d_provider:get_provider_info",
        "e2e3d = e2e3d_provider.plugin:E2E3DPlugin",
        "e2e3d = e2e3d_provider.cli:main",
    ):
        assert line in entry_points
    # the sample images, the dashboard's and the viewer's files, the vendored Swagger UI, ReDoc, plotly.js and the
    # viewer's libraries (the bundle, the LAZ decoder's WebAssembly, their licenses), and the example DAGs
    for name in (
        "e2e3d_provider/devstack/sample_data/terrain/view_01.jpg",
        "e2e3d_provider/api/static/dashboard.js",
        "e2e3d_provider/api/static/viewer.html",
        "e2e3d_provider/api/static/viewer.js",
        "e2e3d_provider/api/static/vendor/plotly-basic.min.js",
        "e2e3d_provider/api/static/vendor/swagger-ui-bundle.js",
        "e2e3d_provider/api/static/vendor/redoc.standalone.js",
        "e2e3d_provider/api/static/vendor/viewer/viewer-libs.js",
        "e2e3d_provider/api/static/vendor/viewer/laz-perf.wasm",
        "e2e3d_provider/api/static/vendor/viewer/README.md",
        "e2e3d_provider/api/static/vendor/viewer/three.LICENSE",
        "e2e3d_provider/api/static/vendor/viewer/3d-tiles-renderer.LICENSE",
        "e2e3d_provider/example_dags/e2e3d_reconstruction.py",
        "e2e3d_provider/example_dags/e2e3d_maintenance.py",
        "e2e3d_provider/example_dags/e2e3d_backup.py",
    ):
        assert name in names


def test_the_sdist_carries_the_package_readme_changelog_and_license(built: dict[str, Path]) -> None:
    with tarfile.open(built["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert source_files() <= names, sorted(source_files() - names)
    assert {"README.md", "CHANGELOG.md", "LICENSE", "setup.cfg", "pyproject.toml"} <= names
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert f"## {e2e3d_provider.__version__}" in changelog


def test_the_installed_package_is_the_built_wheel(built: dict[str, Path]) -> None:
    if EDITABLE:
        pytest.skip("an editable install (the fast loop); CI installs the wheel and runs this")
    from importlib.metadata import distribution

    record = {str(f) for f in distribution("e2e3d-provider").files or [] if str(f).startswith("e2e3d_provider/")}
    record = {f for f in record if not f.endswith(".pyc")}
    wheel = {n for n in zipfile.ZipFile(built["wheel"]).namelist() if n.startswith("e2e3d_provider/")}
    assert record == wheel


def _outside(tmp_path: Path, *args: str, python: Path = BIN, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command of the installed environment from a folder outside the checkout, with nothing of the
    session's environment that would point it at the source tree or the test servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "E2E3D", "PYTHON"))}
    env["AIRFLOW_HOME"] = str(tmp_path / "airflow-home")
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    command = [str(python / args[0]), *args[1:]]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout)


IMPORT_ALL = """
import importlib, pkgutil, sys
import e2e3d_provider

failed = []
count = 0
for info in pkgutil.walk_packages(e2e3d_provider.__path__, "e2e3d_provider."):
    if ".example_dags." in info.name:
        continue  # DAG files, parsed by Airflow (checked below), not modules to import
    count += 1
    try:
        importlib.import_module(info.name)
    except Exception as err:
        failed.append(f"{info.name}: {type(err).__name__}: {err}")
print(e2e3d_provider.__file__)
print(count)
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def _check_installed(tmp_path: Path, python: Path) -> None:
    result = _outside(tmp_path, "python", "-c", IMPORT_ALL, python=python)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    origin, count = result.stdout.splitlines()[:2]
    assert "site-packages" in origin and not Path(origin).is_relative_to(REPO / "e2e3d_provider"), origin
    # every module of the source tree (the example_dags package counts for the package's own __init__)
    modules = [p for p in SOURCE.rglob("*.py") if "__pycache__" not in p.parts and p.parent.name != "example_dags"]
    assert int(count) == len(modules)
    version = _outside(tmp_path, "e2e3d", "--version", python=python)
    assert version.returncode == 0 and version.stdout.strip() == f"e2e3d {e2e3d_provider.__version__}"
    help_ = _outside(tmp_path, "e2e3d", "--help", python=python)
    assert help_.returncode == 0 and "bootstrap" in help_.stdout and "dags" in help_.stdout, help_.stderr
    dags = _outside(tmp_path, "e2e3d", "dags", "--copy", str(tmp_path / "my-dags"), python=python)
    assert dags.returncode == 0, dags.stderr
    assert sorted(p.name for p in (tmp_path / "my-dags").glob("*.py")) == [
        "e2e3d_backup.py",
        "e2e3d_maintenance.py",
        "e2e3d_reconstruction.py",
    ]
    providers = _outside(tmp_path, "airflow", "providers", "list", "-o", "json", python=python)
    assert providers.returncode == 0, providers.stderr[-3000:]
    listed = {p["package_name"]: p["version"] for p in json.loads(providers.stdout)}
    assert listed.get("e2e3d-provider") == e2e3d_provider.__version__
    plugins = _outside(tmp_path, "airflow", "plugins", "-o", "json", python=python)
    assert plugins.returncode == 0, plugins.stderr[-3000:]
    assert [p["name"] for p in json.loads(plugins.stdout)].count("e2e3d") == 1
    # the copied example DAGs parse in Airflow's own DagBag, from the installed package
    parse = _outside(
        tmp_path,
        "python",
        "-c",
        "import sys; from airflow.dag_processing.dagbag import DagBag; b = DagBag(sys.argv[1]); "
        "print(sorted(b.dag_ids)); sys.exit(1 if b.import_errors else 0)",
        str(tmp_path / "my-dags"),
        python=python,
    )
    assert parse.returncode == 0, parse.stdout + parse.stderr[-3000:]
    assert "e2e3d_reconstruction" in parse.stdout


def test_the_installed_wheel_works_from_outside_the_checkout(tmp_path: Path) -> None:
    if EDITABLE:
        pytest.skip("an editable install (the fast loop); CI installs the wheel and runs this")
    _check_installed(tmp_path, BIN)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_fresh_venv_with_the_wheel_and_its_stack_extra(built: dict[str, Path], tmp_path: Path) -> None:
    """A user's install: a new virtual environment, ``pip install <wheel>[stack]`` (no checkout, not
    editable), then the same checks from outside the source tree."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", f"{built['wheel']}[stack]"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    _check_installed(tmp_path, venv / "bin")
