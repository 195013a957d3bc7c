"""The embedded stack: loopback only, every port assigned, side by side, no orphans."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from e2e3d_provider.devstack import stack

#: Ports `weed mini` opens by default when not told otherwise (master, filer, S3, admin, lance, ...).
WEED_DEFAULT_PORTS = {9333, 19333, 8888, 18888, 8333, 18333, 8080, 18080, 23646, 33646, 9101, 8181, 7333, 6060}


def _listening(pid: int) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def _wait_gone(pids: list[int], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(stack.pid_alive(p) for p in pids):
            return True
        time.sleep(0.2)
    return False


def test_session_stack_listens_on_loopback_only_with_assigned_ports(stack_info: stack.StackInfo | None) -> None:
    if stack_info is None:
        pytest.skip("external servers configured (E2E3D_TEST_*): there is no embedded stack to inspect")
    weed = _listening(stack_info.weed_pid)
    postgres = _listening(stack_info.pg_pid)
    assert ("127.0.0.1", stack_info.s3_port) in weed
    assert ("127.0.0.1", stack_info.pg_port) in postgres
    assert {ip for ip, _ in weed | postgres} == {"127.0.0.1"}
    assert not {port for _, port in weed} & WEED_DEFAULT_PORTS


def test_stack_env_prints_connection_exports(stack_info: stack.StackInfo | None) -> None:
    if stack_info is None:
        pytest.skip("external servers configured (E2E3D_TEST_*): there is no embedded stack to inspect")
    out = subprocess.run(
        [sys.executable, "-m", "e2e3d_provider.cli", "stack", "env", "--dir", stack_info.base_dir],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "export AIRFLOW_CONN_MINIO_DEFAULT=" in out and "export AIRFLOW_CONN_E2E3D_METADATA=" in out
    # the data root goes with the stack: the default /app/data does not exist on a developer machine
    assert f"export E2E3D_DATA_ROOT={Path(stack_info.base_dir) / 'data'}" in out
    status = subprocess.run(
        [sys.executable, "-m", "e2e3d_provider.cli", "stack", "status", "--dir", stack_info.base_dir],
        capture_output=True,
        text=True,
    )
    assert status.returncode == 0 and '"running": true' in status.stdout


@pytest.mark.slow
def test_second_stack_runs_beside_the_first_and_stops_clean(tmp_path: Path, stack_info: stack.StackInfo | None) -> None:
    info = stack.start_stack(tmp_path / "second")
    try:
        assert stack.is_running(info)
        if stack_info is not None:
            assert info.s3_port != stack_info.s3_port and info.pg_port != stack_info.pg_port
            assert stack.is_running(stack_info)
        assert stack.start_stack(tmp_path / "second") == info  # up twice: the same stack
    finally:
        assert stack.stop_stack(tmp_path / "second")
    assert _wait_gone([info.weed_pid, info.pg_pid])
    assert not stack.stop_stack(tmp_path / "second")
    again = stack.start_stack(tmp_path / "second")  # restart keeps credentials and data
    try:
        assert again.access_key == info.access_key and again.pg_password == info.pg_password
    finally:
        stack.stop_stack(tmp_path / "second")


@pytest.mark.slow
def test_watchdog_stops_the_stack_when_its_owner_is_killed(tmp_path: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        info = stack.start_stack(tmp_path / "owned", owner_pid=owner.pid)
        assert info.watchdog_pid and stack.pid_alive(info.watchdog_pid)
        owner.kill()  # a crashed test run: no teardown runs
        owner.wait()
        assert _wait_gone([info.weed_pid, info.pg_pid, info.watchdog_pid]), "stack outlived its owner"
        assert stack.read_state(tmp_path / "owned") is None
    finally:
        owner.kill()
        stack.stop_stack(tmp_path / "owned")


def test_stack_dir_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(stack.DEFAULT_STACK_DIR_ENV, str(tmp_path))
    assert stack.default_stack_dir() == tmp_path
    monkeypatch.delenv(stack.DEFAULT_STACK_DIR_ENV)
    assert stack.default_stack_dir().name == f"e2e3d-stack-{os.getuid()}"
    assert stack.stack_status(tmp_path / "none") == {"running": False, "base_dir": str((tmp_path / "none").resolve())}
