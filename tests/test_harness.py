"""The harness tests what users receive: a Python the tests start imports the installed package.

``python -c`` puts the current folder first on ``sys.path``, and the suite runs from the checkout, so a
child started that way imported ``e2e3d_provider`` from the source tree, not from the installed wheel
(conftest refuses exactly that for the session itself). ``-P`` (Python 3.11) leaves the folder out.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.helpers import REPO


def python_c_calls_without_P(source: str) -> list[int]:
    """Lines of ``source`` that start this Python (``sys.executable``) with ``-c`` but without ``-P``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.List | ast.Call):
            items = node.elts if isinstance(node, ast.List) else node.args
            texts = [ast.unparse(item) for item in items]
            if "sys.executable" in texts and "'-c'" in texts and "'-P'" not in texts and "'-I'" not in texts:
                found.append(node.lineno)
    return found


def test_a_python_the_tests_start_imports_the_installed_package() -> None:
    code = "import e2e3d_provider; print(e2e3d_provider.__file__)"
    child = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    purelib = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert Path(child.stdout.strip()).resolve().is_relative_to(purelib), child.stdout + child.stderr


def test_no_test_starts_python_c_without_P() -> None:
    problems = [
        f"{path.name}:{line}"
        for path in sorted((REPO / "tests").rglob("*.py"))
        for line in python_c_calls_without_P(path.read_text())
    ]
    assert not problems, f"python -c without -P imports the checkout: {problems}"


def test_the_check_sees_a_python_c_without_P() -> None:
    assert python_c_calls_without_P('subprocess.run([sys.executable, "-c", CODE])') == [1]
    assert python_c_calls_without_P('f(sys.executable, "-c", CODE, "x")') == [1]
    assert python_c_calls_without_P('subprocess.run([sys.executable, "-P", "-c", CODE])') == []
