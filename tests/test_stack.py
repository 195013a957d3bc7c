"""The embedded stack: loopback only, every port assigned, side by side, no orphans."""

from __future__ import annotations

import ipaddress
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
MINIO_DEFAULT_PORTS = {9000, 9001}


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
    s3 = _listening(stack_info.s3_pid)
    postgres = _listening(stack_info.pg_pid)
    assert ("127.0.0.1", stack_info.s3_port) in s3
    assert ("127.0.0.1", stack_info.pg_port) in postgres
    # loopback only (MinIO also binds its ports on ::1, the IPv6 loopback)
    assert all(ipaddress.ip_address(ip).is_loopback for ip, _ in s3 | postgres), s3 | postgres
    assert not {port for _, port in s3} & (WEED_DEFAULT_PORTS | MINIO_DEFAULT_PORTS)


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
        [sys.executable, "-m", "e2e3d_provider.cli", "stack", "status", "--json", "--dir", stack_info.base_dir],
        capture_output=True,
        text=True,
    )
    assert status.returncode == 0 and '"running": true' in status.stdout
    api = subprocess.run(
        [*ENV_COMMAND, "--dir", stack_info.base_dir, "--component", "api-server"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    exported = {line.split("=", 1)[0].removeprefix("export ") for line in api.splitlines()}
    assert exported == {
        "AIRFLOW_CONN_MINIO_API",
        "AIRFLOW_CONN_E2E3D_METADATA",
        "E2E3D_DATA_ROOT",
        "E2E3D_STACK_DIR",
        "AIRFLOW__E2E3D__VOLUME_VACUUM",
    }
    assert stack_info.secret_key not in api  # the admin's keys only where bootstrap runs


ENV_COMMAND = [sys.executable, "-m", "e2e3d_provider.cli", "stack", "env"]


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
    assert _wait_gone([info.s3_pid, info.pg_pid])
    assert not stack.stop_stack(tmp_path / "second")
    again = stack.start_stack(tmp_path / "second")  # restart keeps credentials and data
    try:
        assert again.access_key == info.access_key and again.pg_password == info.pg_password
    finally:
        stack.stop_stack(tmp_path / "second")


@pytest.mark.slow
@pytest.mark.integration  # runs processes of its own
def test_watchdog_stops_the_stack_when_its_owner_is_killed(tmp_path: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-P", "-c", "import time; time.sleep(600)"])
    try:
        info = stack.start_stack(tmp_path / "owned", owner_pid=owner.pid)
        assert info.watchdog_pid and stack.pid_alive(info.watchdog_pid)
        owner.kill()  # a crashed test run: no teardown runs
        owner.wait()
        assert _wait_gone([info.s3_pid, info.pg_pid, info.watchdog_pid]), "stack outlived its owner"
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


def test_a_stack_directory_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    """Another local user who makes the predictable default directory (or its stack.json) first must not
    get their endpoint and keys handed out, nor their PIDs killed by `stack down`."""
    import json as _json
    import pwd

    nobody = pwd.getpwnam("nobody")
    forged = {
        "base_dir": str(tmp_path),
        "s3_port": 1,
        "access_key": "theirs",
        "secret_key": "theirs",
        "pg_port": 2,
        "pg_password": "theirs",
        "s3_pid": 1,
        "pg_pid": 1,
    }
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    (theirs / "stack.json").write_text(_json.dumps(forged))
    os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
    open_to_all = tmp_path / "open"
    open_to_all.mkdir()
    open_to_all.chmod(0o777)
    ours_with_their_state = tmp_path / "ours"
    ours_with_their_state.mkdir(mode=0o700)
    (ours_with_their_state / "stack.json").write_text(_json.dumps(forged))
    os.chown(ours_with_their_state / "stack.json", nobody.pw_uid, nobody.pw_gid)
    for base, reason in (
        (theirs, "not to you"),
        (open_to_all, "writable by others"),
        (ours_with_their_state, "not to you"),
    ):
        with pytest.raises(stack.StackError, match=reason):
            stack.read_state(base)
        for action in ("env", "down"):
            result = subprocess.run(
                [sys.executable, "-m", "e2e3d_provider.cli", "stack", action, "--dir", str(base)],
                capture_output=True,
                text=True,
            )
            assert result.returncode == 1 and "refusing the stack" in result.stderr, (action, result.stderr)
            assert "theirs" not in result.stdout


def test_the_stacks_secret_files_are_private(stack_info: stack.StackInfo | None) -> None:
    if stack_info is None:
        pytest.skip("external servers configured (E2E3D_TEST_*): there is no embedded stack to inspect")
    base = Path(stack_info.base_dir)
    secrets = {"seaweedfs": ("s3-identities.json",), "minio": ()}[stack_info.server]
    for name in (*secrets, "credentials.json", "stack.json"):  # pg-password is gone after initdb
        assert (base / name).stat().st_mode & 0o777 == 0o600, name
    assert not list(base.glob(".*.tmp"))  # no temporary secret left behind


def test_secret_files_are_written_0600_even_over_a_wider_file(tmp_path: Path, monkeypatch) -> None:
    secret = tmp_path / "secret"
    secret.write_text("old")
    secret.chmod(0o644)

    def no_chmod(*args: object, **kwargs: object) -> None:
        raise AssertionError("a secret file must be created 0600, not narrowed after it was written")

    for module, name in ((os, "chmod"), (os, "fchmod"), (Path, "chmod")):
        monkeypatch.setattr(module, name, no_chmod)
    old_umask = os.umask(0)  # the most permissive umask: the mode must come from the open itself
    try:
        stack.write_secret(secret, "new")
    finally:
        os.umask(old_umask)
    assert secret.read_text() == "new" and secret.stat().st_mode & 0o777 == 0o600
