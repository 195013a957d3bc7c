"""Helpers the tests share: plain functions and constants, no fixtures (those are in conftest.py).

Imported by the tests as ``from tests.helpers import ...``; nothing here starts a server by itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trimesh
from PIL import Image
from trimesh.resolvers import FilePathResolver

from e2e3d_provider.devstack import stack
from e2e3d_provider.example_dags import DAGS_DIR

REPO = Path(__file__).resolve().parents[1]


def make_dataset(folder: Path, seeds: list[int]) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {f"img_{seed:04d}.png": png(seed) for seed in seeds}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def load_textured(path: Path) -> trimesh.Trimesh:
    """An OBJ as trimesh reads it with its MTL and texture (which a results folder keeps beside, not below)."""
    return trimesh.load(path, process=False, resolver=FilePathResolver(path, allow_anywhere=True))


def token(username: str, role: str | None) -> str:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    from e2e3d_provider.api.auth import auth_manager

    return auth_manager().generate_jwt(SimpleAuthManagerUser(username=username, role=role))


ROLES = {"viewer": "viewer", "runner": "user", "admin": "admin"}  # user name -> SimpleAuthManager role


def as_user(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(name, ROLES[name])}"}


def own_stack_server(s3_server: str) -> str:
    """The server a test's own stack runs (one it kills, restarts or starts with TLS): the lane's."""
    if s3_server not in stack.SERVERS:
        pytest.skip("external servers configured (E2E3D_TEST_*): this test needs an embedded stack of its own")
    return s3_server


BROWSER_PACKAGES = ("chromium", "chromium-driver")  # Debian's: /usr/bin/chromium, /usr/bin/chromedriver


def ensure_chromium() -> tuple[str, str]:
    """Debian's Chromium and ChromeDriver: installed here by the test session (as root) when missing,
    since no browser is on a fresh machine; without root, a clear error saying what to install."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    if os.geteuid() != 0:
        pytest.fail(
            f"the UI tests need Debian's {' and '.join(BROWSER_PACKAGES)}: "
            f"sudo apt-get install -y {' '.join(BROWSER_PACKAGES)}"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *BROWSER_PACKAGES]):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-3000:]}"
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "apt-get installed the browser packages, but chromium/chromedriver are not on PATH"
    return chromium, driver


#: the Node tools the tests run (tests/js/package.json pins them; npm ci installs them from its lock file)
JS_DIR = REPO / "tests" / "js"


def ensure_gltf_validator() -> Path:
    """The Khronos glTF validator (npm ``gltf-validator``, pinned in tests/js/package-lock.json): installed
    once with ``npm ci`` when tests/js/node_modules lacks it (a fresh clone); without node and npm, a clear
    error saying what to install. Returns the script that runs it (tests/js/validate_gltf.cjs)."""
    import fcntl

    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        pytest.fail(
            "the glTF tests need Node.js 18+ and npm (the Khronos validator is an npm package): "
            "apt-get install -y nodejs npm"
        )
    installed = JS_DIR / "node_modules" / "gltf-validator" / "package.json"
    with open(JS_DIR / ".install.lock", "w") as lock:  # parallel sessions install once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not installed.is_file():
            command = [npm, "ci", "--prefix", str(JS_DIR), "--ignore-scripts", "--no-audit", "--no-fund"]
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-3000:]}"
    assert installed.is_file(), "npm ci ran, but gltf-validator is not in tests/js/node_modules"
    return JS_DIR / "validate_gltf.cjs"


def validate_gltf(script: Path, paths: list[Path]) -> dict[str, dict[str, Any]]:
    """The validator's report of each file (errors, warnings, infos, hints, messages), one node process
    for all of them."""
    result = subprocess.run(
        ["node", str(script), *map(str, paths)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"the glTF validator failed:\n{result.stderr[-3000:]}"
    return {str(Path(k)): v for k, v in json.loads(result.stdout).items()}


def load_repo_dag(file_name: str, factory: str):
    """Build one of the package's example DAGs (tests may import what products must not)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"repo_dags_{Path(file_name).stem}", DAGS_DIR / file_name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, factory)()


def xcom(dag_run, task_id: str):
    """The return value a task pushed in a finished DagRun."""
    return dag_run.get_task_instance(task_id).xcom_pull(task_ids=task_id)


def task_states(dag_run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def tiny_png(label: str) -> bytes:
    """A real 4 x 4 PNG whose bytes differ by ``label`` (in a text chunk): an image every reader accepts."""
    import io

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("label", label)
    out = io.BytesIO()
    Image.new("RGB", (4, 4), "gray").save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def digests(root: Path) -> dict[str, str]:
    """relpath -> sha256 of every file below ``root``: what a test compares to say a folder was left as it was."""
    import hashlib

    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write_files(root: Path, files: dict[str, bytes]) -> dict[str, Path]:
    """Create ``files`` (relpath -> bytes) below ``root``; return relpath -> path."""
    out = {}
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[rel] = path
    return out


#: answers of documented API operations with a status their OpenAPI does not list, as (method, path
#: template, status): filled by :class:`DocumentedStatuses` (which :func:`serve` installs), emptied and
#: checked after every test by conftest's ``documented_statuses`` fixture
UNDOCUMENTED: list[tuple[str, str, int]] = []


def undocumented(scope: dict[str, Any], status: int) -> tuple[str, str, int] | None:
    """``(method, path, status)`` when the operation that answered (the route Starlette matched, in the
    FastAPI app that matched it) does not document ``status`` in its OpenAPI; None when it does, or when no
    documented operation answered (no route, a page or redirect outside the schema, a method the route lacks)."""
    from fastapi import FastAPI
    from fastapi.routing import APIRoute

    route, app, method = scope.get("route"), scope.get("app"), scope.get("method", "GET")
    if not isinstance(route, APIRoute) or not isinstance(app, FastAPI) or not route.include_in_schema:
        return None
    if method not in (route.methods or ()):
        return None
    operation = app.openapi()["paths"].get(route.path_format, {}).get(method.lower())
    responses = (operation or {}).get("responses", {})
    if {str(status), f"{str(status)[0]}XX", "default"} & set(responses):
        return None
    return method, route.path_format, status


class DocumentedStatuses:
    """ASGI wrapper that records (in :data:`UNDOCUMENTED`) every answer whose status the answering
    operation's OpenAPI does not document, so any test that serves the API fails on one. The route is
    known once Starlette's router matched it (``scope["route"]``, set in the same scope dict the app and
    its mounts share), which it has by the time the response starts."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def checked(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                found = undocumented(scope, int(message["status"]))
                if found is not None:
                    UNDOCUMENTED.append(found)
            await send(message)

        await self.app(scope, receive, checked)


def take_undocumented() -> list[tuple[str, str, int]]:
    """What :class:`DocumentedStatuses` recorded since the last call, and forget it."""
    found = list(UNDOCUMENTED)
    del UNDOCUMENTED[: len(found)]
    return found


def serve(app) -> tuple[str, Any, Any]:
    """Run an ASGI app with uvicorn on a free loopback port in a thread; (url, server, thread). The app runs
    under :class:`DocumentedStatuses`: an API answer with a status its OpenAPI lacks fails the test."""
    import threading
    import time

    import uvicorn

    (port,) = stack.free_ports(1)
    guarded = DocumentedStatuses(app)
    server = uvicorn.Server(uvicorn.Config(guarded, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


def forge_manifest(storage, job_id: str, edit, bucket: str = "output") -> None:
    """Replace a published job's manifest by ``edit(text)`` and its SUCCESS by one naming the new manifest, as a
    worker can: a consistent pair, so only the manifest's own content is wrong."""
    from e2e3d_provider.hooks.storage import StorageHook

    worker = StorageHook("minio_worker")
    text = edit(storage.get_bytes(bucket, f"{job_id}/metadata.json").decode())
    marker = json.loads(storage.get_bytes(bucket, f"{job_id}/SUCCESS"))
    marker["manifest_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    worker.put_bytes(bucket, f"{job_id}/metadata.json", text.encode(), "application/json")
    worker.put_bytes(bucket, f"{job_id}/SUCCESS", json.dumps(marker).encode(), "application/json")


def edit_first_file(change: dict):
    """An edit of a manifest's first file entry, keeping the rest; values spelled ``@...`` go in verbatim."""

    def edit(text: str) -> str:
        body = json.loads(text)
        body["files"][0].update(change)
        return json.dumps(body).replace('"@1e400"', "1e400").replace('"@NaN"', "NaN")

    return edit


def png(seed: int, size: int = 48) -> bytes:
    """A small PNG whose pixels (and so bytes) depend on ``seed``."""
    img = Image.frombytes(
        "RGB", (size, size), hashlib.sha256(str(seed).encode()).digest() * (size * size * 3 // 32 + 1)
    )
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()
