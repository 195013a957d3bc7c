"""The package's folders are its architecture (DESIGN §2), and these rules keep them so.

Every import in every module of the package is read (lazy imports inside functions included) and
checked against the layer rules; a self-test feeds the checker a violating module so a checker that
stopped seeing imports would fail too.
"""

from __future__ import annotations

import ast
import re
from functools import partial
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "e2e3d_provider"

#: the provider's face: all that sits at the package root
ROOT_MODULES = {"__init__", "exceptions", "plugin", "cli", "links"}
#: layer -> layers of ours it may import (besides itself and ``exceptions``)
ALLOWED = {
    "core": set(),
    "rightsize": {"core"},
    "hooks": {"core"},
    "lifecycle": {"core", "hooks", "rightsize"},
    "triggers": {"core.layout", "hooks", "lifecycle"},
    "sensors": {"core.layout", "hooks", "lifecycle", "triggers", "links"},
    "operators": {"core.layout", "core.xcom", "hooks", "lifecycle", "links"},
    "listeners": {"hooks", "lifecycle"},
    "decorators": {"lifecycle", "operators"},
    "api": {"core", "hooks", "lifecycle", "__init__"},
    "plugin": {"api", "hooks.telemetry", "listeners"},
    "devstack": {"core", "hooks", "lifecycle", "example_dags"},
    "cli": {"__init__", "core", "hooks", "lifecycle", "devstack", "example_dags", "commands"},
    # the CLI's subcommands (one module per group); cli.py builds the parser and dispatches to them
    "commands": {"__init__", "core", "hooks", "lifecycle", "devstack", "example_dags"},
    # the example DAGs (shipped in the package; the checkout's dags/ links here): the Airflow classes and
    # the steps they chain, plus one developer module: the demo reconstruction, imported inside its task
    # (the volume compaction is a setting, [e2e3d] volume_vacuum, not an import; its default is in core.settings)
    "example_dags": {
        "core.layout",
        "core.settings",
        "hooks",
        "lifecycle",
        "operators",
        "sensors",
        "devstack.reconstruct",
    },
    # get_provider_info() declares the [e2e3d] options from their one declaration (core.settings: no Airflow)
    "__init__": {"core.settings"},
    "exceptions": set(),
    "links": set(),  # the operators' extra links: Airflow's link base class and URLs, nothing of ours
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
        "commands",
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
    assert users <= {"cli", "commands", "example_dags"}


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


# --- the lifecycle's rooms ---------------------------------------------------------------------------

LIFECYCLE = PACKAGE / "lifecycle"
#: room -> rooms it may import (besides itself and the shared modules); one way, bottom to top
ROOMS = {
    "inputs": set(),
    "results": set(),
    "worker": {"inputs", "results"},
    "durability": {"results"},
    "maintenance": {"inputs", "results", "worker", "durability"},
}
#: modules at lifecycle/'s top level, which every room may use
SHARED = {"locks"}
#: what an operator, sensor, trigger, decorator or DAG never reaches for: it calls one lifecycle step,
#: and the step takes the lock, reads the hand-off and confines the paths
PLUMBING = (
    "e2e3d_provider.lifecycle.locks",
    "e2e3d_provider.lifecycle.results.handoff",
    "e2e3d_provider.lifecycle.worker.rebuild",
    "e2e3d_provider.core.local_paths",
)
TASK_LAYERS = {"operators", "sensors", "triggers", "decorators", "example_dags"}


def room_of(path: Path) -> str:
    return path.relative_to(LIFECYCLE).parts[0].removesuffix(".py")


def room_violations(room: str, source: str) -> list[str]:
    """What in ``source`` (a module of lifecycle room ``room``) breaks the order between rooms."""
    found = []
    for name in imports_of(source):
        parts = name.split(".")
        if parts[:2] != ["e2e3d_provider", "lifecycle"] or len(parts) < 3:
            continue
        other = parts[2]
        if other in SHARED or other == room:
            continue
        if other not in ROOMS:
            found.append(f"imports {name}: not a room of lifecycle/")
        elif other not in ROOMS.get(room, set()):
            found.append(f"imports {name}: the {room} room may use only {sorted(ROOMS.get(room, set())) or 'no room'}")
    return found


def plumbing_violations(source: str) -> list[str]:
    return [f"imports {name}: lifecycle plumbing" for name in imports_of(source) if name.startswith(PLUMBING)]


def test_the_lifecycle_is_five_rooms_and_its_shared_modules() -> None:
    top = {p.stem for p in LIFECYCLE.glob("*.py")} - {"__init__"}
    assert top == SHARED, f"a new module at lifecycle/'s top level belongs in a room: {sorted(top - SHARED)}"
    rooms = {p.name for p in LIFECYCLE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert rooms == set(ROOMS)
    for room in rooms:
        assert (LIFECYCLE / room / "__init__.py").read_text().startswith('"""'), f"{room}/ says what it holds"


def test_dependencies_between_rooms_run_one_way() -> None:
    problems = [
        f"{path.relative_to(ROOT)} {problem}"
        for path in sorted(LIFECYCLE.rglob("*.py"))
        if "__pycache__" not in path.parts and path.parent != LIFECYCLE
        for problem in room_violations(room_of(path), path.read_text())
    ]
    problems += [
        f"{path.relative_to(ROOT)} {problem}"
        for path in LIFECYCLE.glob("*.py")
        for problem in room_violations("shared", path.read_text())
        if path.stem != "__init__"
    ]
    assert not problems, "\n".join(problems)


def test_tasks_call_lifecycle_steps_not_its_plumbing() -> None:
    problems = [
        f"{path.relative_to(ROOT)} {problem}"
        for path in package_modules()
        if layer_of(path) in TASK_LAYERS
        for problem in plumbing_violations(path.read_text())
    ]
    assert not problems, "\n".join(problems)


# --- what the checkout adds: dags/ and plugins/ --------------------------------------------------------


def test_the_checkouts_dags_folder_is_the_packages_example_dags() -> None:
    """``dags/`` is a link to the shipped DAGs, so the rules read above (example_dags) are the rules it keeps."""
    dags = ROOT / "dags"
    assert dags.is_symlink() and dags.resolve() == (PACKAGE / "example_dags").resolve()


def test_the_plugins_folder_only_mounts_the_plugin() -> None:
    for path in sorted((ROOT / "plugins").glob("*.py")):
        ours = [n for n in imports_of(path.read_text()) if n.startswith("e2e3d_provider")]
        assert ours and all(n.startswith("e2e3d_provider.plugin") for n in ours), f"{path.name}: {ours}"


def top_level_imports(source: str) -> list[str]:
    """Imports run when a module is imported (not those inside its functions)."""
    tree = ast.parse(source)
    body = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    return imports_of(ast.unparse(ast.Module(body=body, type_ignores=[])))


def dag_violations(source: str) -> list[str]:
    """A DAG file imports no developer module when it is parsed: the demo reconstruction only inside its task."""
    return [f"imports {name} at parse time" for name in top_level_imports(source) if ".devstack" in name]


def test_example_dags_import_no_developer_module_when_parsed() -> None:
    problems = [
        f"{path.name} {problem}"
        for path in sorted((PACKAGE / "example_dags").glob("*.py"))
        for problem in dag_violations(path.read_text())
    ]
    assert not problems, "\n".join(problems)


# --- keys and run names are spelled in core/ only -------------------------------------------------------

_STAMP_REGEX = re.compile(r"\\d\{8\}T\\d\{6\}Z")


def spelled_keys(source: str) -> list[str]:
    """Object keys and run names built outside ``core/layout.py``: the stamp's pattern, a content-addressed
    shard (``f"{sha[:2]}/..."``), a run name (``f"{job_id}_{stamp}"``), a key below a job (``f"{job_id}/..."``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _STAMP_REGEX.search(node.value):
            found.append(f"line {node.lineno}: spells the run-stamp pattern")
        if not isinstance(node, ast.JoinedStr):
            continue
        parts = node.values
        for i, part in enumerate(parts[:-1]):
            after = parts[i + 1]
            if not (isinstance(part, ast.FormattedValue) and isinstance(after, ast.Constant)):
                continue
            expr, text = ast.unparse(part.value), str(after.value)
            sliced = isinstance(part.value, ast.Subscript) and isinstance(part.value.slice, ast.Slice)
            if sliced and text.startswith("/"):
                found.append(f"line {node.lineno}: spells a content-addressed key")
            if "job" in expr and text == "_" and i + 2 < len(parts) and "stamp" in ast.unparse(parts[i + 2]):
                found.append(f"line {node.lineno}: spells a run name")
            if re.fullmatch(r"(\w+\.)?job_?id", expr) and re.match(r"/[\w.{]", text):
                found.append(f"line {node.lineno}: spells a key below a job")
    return found


def test_keys_and_run_names_are_spelled_only_in_core() -> None:
    problems = [
        f"{path.relative_to(ROOT)} {problem}"
        for path in package_modules()
        if layer_of(path) != "core"
        for problem in spelled_keys(path.read_text())
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("check", "source", "complaint"),
    [
        (partial(room_violations, "results"), "from e2e3d_provider.lifecycle.worker.input_cache import x", "may use"),
        (partial(room_violations, "inputs"), "from e2e3d_provider.lifecycle.results.publish import x", "may use"),
        (
            partial(room_violations, "durability"),
            "def f():\n    from e2e3d_provider.lifecycle.maintenance import x",
            "may use",
        ),
        (partial(room_violations, "worker"), "from e2e3d_provider.lifecycle.helpers import x", "not a room"),
        (plumbing_violations, "from e2e3d_provider.lifecycle.locks import job_lock", "plumbing"),
        (plumbing_violations, "from e2e3d_provider.lifecycle.results.handoff import read_handoff", "plumbing"),
        (plumbing_violations, "from e2e3d_provider.core.local_paths import require_local_dir", "plumbing"),
        (dag_violations, "from e2e3d_provider.devstack.volumes import embedded_vacuum", "parse time"),
        (spelled_keys, 'k = f"{sha[:2]}/{sha}"', "content-addressed"),
        (spelled_keys, 'n = f"{job_id}_{stamp}"', "run name"),
        (spelled_keys, 'k = f"{job_id}/metadata.json"', "below a job"),
        (spelled_keys, 'R = re.compile(r"^(.+)_(\\d{8}T\\d{6}Z)$")', "run-stamp pattern"),
    ],
)
def test_the_new_rules_catch_a_planted_violation(check: Any, source: str, complaint: str) -> None:
    assert any(complaint in problem for problem in check(source))


def test_the_new_rules_accept_what_they_allow() -> None:
    assert room_violations("worker", "from e2e3d_provider.lifecycle.inputs.datasets import read_dataset") == []
    assert room_violations("durability", "from e2e3d_provider.lifecycle.locks import job_lock") == []
    assert dag_violations("def t():\n    from e2e3d_provider.devstack.reconstruct import reconstruct") == []
    assert spelled_keys('m = f"job {job_id} is {status}"') == []
