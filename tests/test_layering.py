"""The package's folders are its architecture (DESIGN §2), and these rules keep them so.

Every import in every module of the package is read (lazy imports inside functions included) and
checked against the layer rules; a self-test feeds the checker a violating module so a checker that
stopped seeing imports would fail too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "e2e3d_provider"

#: the provider's face: all that sits at the package root
ROOT_MODULES = {"__init__", "exceptions", "plugin", "cli"}
#: layer -> layers of ours it may import (besides itself and ``exceptions``)
ALLOWED = {
    "core": set(),
    "rightsize": {"core"},
    "hooks": {"core"},
    "lifecycle": {"core", "hooks", "rightsize"},
    "triggers": {"core.layout", "hooks", "lifecycle"},
    "sensors": {"core.layout", "hooks", "lifecycle", "triggers"},
    "operators": {"core.layout", "hooks", "lifecycle"},
    "listeners": {"hooks", "lifecycle"},
    "decorators": {"lifecycle", "operators"},
    "api": {"core", "hooks", "lifecycle", "__init__"},
    "plugin": {"api", "hooks.telemetry", "listeners"},
    "devstack": {"core", "hooks", "lifecycle", "example_dags"},
    "cli": {"__init__", "core", "hooks", "lifecycle", "devstack", "example_dags"},
    # the example DAGs (shipped in the package; the checkout's dags/ links here): the Airflow classes and
    # the steps they chain, plus exactly two developer modules: the demo reconstruction, imported inside
    # its task, and the embedded stack's volume compaction, which the maintenance DAG should not need
    "example_dags": {
        "core.layout",
        "hooks",
        "lifecycle",
        "operators",
        "sensors",
        "devstack.reconstruct",
        "devstack.volumes",
    },
    "__init__": set(),
    "exceptions": set(),
}
#: layers that must not import Airflow at all
AIRFLOW_FREE = {"core", "rightsize", "lifecycle", "exceptions", "__init__"}


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports_of(source: str) -> list[str]:
    """Every module name imported anywhere in ``source`` (top level or inside functions)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, "relative imports hide the layer a module comes from"
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def violations(layer: str, source: str) -> list[str]:
    """What in ``source`` (a module of ``layer``) breaks the rules."""
    found = []
    for name in imports_of(source):
        top = name.split(".")[0]
        if top in ("dags", "plugins"):
            found.append(f"imports {name}: nothing imports the example DAGs or the plugins folder")
        if top == "airflow" and layer in AIRFLOW_FREE:
            found.append(f"imports {name}: {layer} imports no Airflow")
        if top != "e2e3d_provider" or name == "e2e3d_provider":
            continue
        parts = name.split(".")[1:]
        target = parts[0] if parts[0] in ALLOWED or parts[0] in ROOT_MODULES else "__init__"
        if target in (layer, "exceptions"):
            continue
        allowed = ALLOWED[layer]
        if target in allowed or ".".join(parts[:2]) in allowed:
            continue
        found.append(f"imports {name}: {layer} may import only {sorted(allowed) or 'nothing of ours'}")
    return found


def package_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_package_root_holds_only_the_providers_face() -> None:
    assert {p.stem for p in PACKAGE.glob("*.py")} == ROOT_MODULES
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == {
        "core",
        "rightsize",
        "hooks",
        "lifecycle",
        "triggers",
        "sensors",
        "operators",
        "decorators",
        "listeners",
        "api",
        "devstack",
        "example_dags",
    }
    for folder in folders:  # a folder appears when its first module does
        assert [p for p in (PACKAGE / folder).glob("*.py") if p.stem != "__init__"], f"{folder}/ is empty"


def test_every_module_keeps_to_its_layer() -> None:
    problems = []
    for path in package_modules():
        for problem in violations(layer_of(path), path.read_text()):
            problems.append(f"{path.relative_to(ROOT)} {problem}")
    assert not problems, "\n".join(problems)


def test_only_the_cli_and_the_tests_import_the_developer_subpackage() -> None:
    users = {
        layer_of(p)
        for p in package_modules()
        if layer_of(p) != "devstack" and any(n.startswith("e2e3d_provider.devstack") for n in imports_of(p.read_text()))
    }
    assert users <= {"cli", "example_dags"}


@pytest.mark.parametrize(
    ("layer", "source", "complaint"),
    [
        ("core", "from airflow.sdk import Variable", "core imports no Airflow"),
        ("core", "def f():\n    from e2e3d_provider.hooks.storage import StorageHook", "core may import only"),
        ("lifecycle", "from e2e3d_provider.operators.archive import ArchiveOperator", "lifecycle may import only"),
        ("operators", "from e2e3d_provider.core.transfer import run_parallel", "operators may import only"),
        ("sensors", "import e2e3d_provider.core.manifest", "sensors may import only"),
        ("hooks", "from e2e3d_provider.lifecycle.results.publish import publish_run", "hooks may import only"),
        ("api", "from e2e3d_provider.devstack.stack import free_ports", "api may import only"),
        ("lifecycle", "from dags.e2e3d_maintenance import x", "nothing imports the example DAGs"),
        ("rightsize", "from airflow.sdk import BaseOperator", "rightsize imports no Airflow"),
        ("rightsize", "from e2e3d_provider.hooks.storage import StorageHook", "rightsize may import only"),
        ("operators", "from e2e3d_provider.rightsize.mesh import read_obj", "operators may import only"),
    ],
)
def test_the_checker_sees_a_violation(layer: str, source: str, complaint: str) -> None:
    assert any(complaint in problem for problem in violations(layer, source))


def test_the_checker_accepts_what_the_rules_allow() -> None:
    assert violations("operators", "from e2e3d_provider.core.layout import BUCKET_OUTPUT") == []
    assert violations("lifecycle", "from e2e3d_provider.core.transfer import TransferResult") == []
    assert violations("cli", "from e2e3d_provider.devstack import stack") == []
