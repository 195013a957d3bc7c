"""``e2e3d airflow`` supervises what it started: a component that exits is started again on the same ports,
within a bounded restart rate, and a run in progress finishes; Ctrl-C (SIGINT/SIGTERM to it) stops all."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from e2e3d_provider.devstack import stack
from e2e3d_provider.devstack.airflow_deployment import AirflowDeployment
from e2e3d_provider.devstack.supervisor import GaveUp, RestartBudget
from tests.helpers import own_stack_server


def test_the_restart_budget_allows_n_restarts_per_window_and_then_gives_up() -> None:
    now = [0.0]
    budget = RestartBudget(max_restarts=3, window=60.0, clock=lambda: now[0])
    assert [budget.spend("scheduler") for _ in range(3)] == [1, 2, 3]
    assert budget.spend("triggerer") == 1  # each component has its own count
    with pytest.raises(GaveUp, match=r"scheduler exited 4 times within 60 s \(at most 3 restarts allowed\)"):
        budget.spend("scheduler")
    now[0] = 60.0  # the first three fall out of the window
    assert budget.spend("scheduler") == 1
    with pytest.raises(ValueError):
        RestartBudget(max_restarts=0)


class Output:
    """A process's combined output, read line by line in the background (so the pipe never fills)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float, proc: subprocess.Popen[str]) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text)
            if found:
                return found
            assert proc.poll() is None, f"e2e3d airflow exited ({proc.returncode}):\n{self.text[-4000:]}"
            time.sleep(0.5)
        raise AssertionError(f"no {pattern!r} within {timeout:.0f}s:\n{self.text[-4000:]}")


def _component_pid(parent: int, component: str) -> int:
    """The PID of an Airflow component ``e2e3d airflow`` started: its child ``airflow <component>`` (or, once
    the process has set its title, ``airflow api_server -- ...``)."""
    for child in psutil.Process(parent).children():
        words = " ".join(child.cmdline()).replace("_", "-").split()
        if words[:2] == ["airflow", component] or (
            len(words) > 2 and words[1].endswith("/airflow") and words[2] == component
        ):
            return child.pid
    raise AssertionError(f"no {component} among the children of {parent}")


def _client(base: Path, url: str, password: str) -> AirflowDeployment:
    """A REST client for the deployment ``e2e3d airflow`` runs (its address and login as printed)."""
    info = stack.read_state(base)
    assert info is not None
    client = AirflowDeployment(info, base / "airflow", [base], info.data_root)
    client.port = int(url.rsplit(":", 1)[1])
    client.password = password
    return client


def _xcom(client: AirflowDeployment, dag_id: str, run_id: str, task_id: str) -> Any:
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
    value = client.get(path)["value"]
    return json.loads(value) if isinstance(value, str) else value


@pytest.mark.slow
@pytest.mark.one_server
@pytest.mark.timeout(1200)
def test_e2e3d_airflow_restarts_a_killed_scheduler_and_the_run_finishes(s3_server: str, tmp_path: Path) -> None:
    """A SIGTERM to the scheduler stopped everything, the S3 server and PostgreSQL included. Now the scheduler,
    killed mid-run (SIGKILL) and again (SIGTERM), is started again on the same deployment, the run finishes,
    nothing warns at start, the maintenance DAG compacts this stack's volumes, and a SIGTERM to `e2e3d
    airflow` itself stops everything it started."""
    own_stack_server(s3_server)
    base = tmp_path / "stack"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "E2E3D_")) and k not in ("XDG_RUNTIME_DIR", "PYTHONWARNINGS")
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "e2e3d_provider.cli", "airflow", "--dir", str(base)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    out = Output(proc)
    try:
        out.wait_for(r"Ctrl-C stops Airflow", 600, proc)
        assert "XDG_RUNTIME_DIR" not in out.text and "Warning" not in out.text, out.text
        url = out.wait_for(r"UI / API:\s+(http://127\.0\.0\.1:\d+)", 5, proc).group(1)
        password = out.wait_for(r"login:\s+admin / (\S+)", 5, proc).group(1)
        client = _client(base, url, password)
        ports = (stack.read_state(base).s3_port, stack.read_state(base).pg_port)  # type: ignore[union-attr]

        client.wait_for_dag("e2e3d_reconstruction")
        client.unpause("e2e3d_reconstruction")
        job_id = f"supervised-{uuid.uuid4().hex[:8]}"
        run_id = client.trigger("e2e3d_reconstruction", {"dataset": "terrain", "job_id": job_id})
        deadline = time.monotonic() + 300
        while "running" not in client.task_states("e2e3d_reconstruction", run_id).values():
            assert time.monotonic() < deadline, client.task_states("e2e3d_reconstruction", run_id)
            time.sleep(0.5)
        scheduler = _component_pid(proc.pid, "scheduler")
        os.kill(scheduler, signal.SIGKILL)  # mid-run: a task is running
        out.wait_for(r"airflow scheduler exited with code -9; started again \(restart 1 of", 60, proc)
        assert client.wait_for_run("e2e3d_reconstruction", run_id, timeout=600) == "success", client.task_states(
            "e2e3d_reconstruction", run_id
        )

        scheduler = _component_pid(proc.pid, "scheduler")
        os.kill(scheduler, signal.SIGTERM)  # what stopped everything before
        out.wait_for(r"airflow scheduler exited with code \d+; started again \(restart 2 of", 120, proc)
        assert _component_pid(proc.pid, "scheduler") != scheduler
        client.wait_healthy(timeout=120)  # the same address: the api-server and the stack never moved
        assert (stack.read_state(base).s3_port, stack.read_state(base).pg_port) == ports  # type: ignore[union-attr]

        client.wait_for_dag("e2e3d_maintenance")
        client.unpause("e2e3d_maintenance")
        maintenance = client.trigger("e2e3d_maintenance", {})
        assert client.wait_for_run("e2e3d_maintenance", maintenance, timeout=600) == "success"
        volumes = _xcom(client, "e2e3d_maintenance", maintenance, "storage_hygiene")["volumes"]
        assert "skipped" not in volumes and re.match(r"compacted \w+ of \d+ SeaweedFS volumes", volumes["done"]), (
            volumes
        )

        components = [_component_pid(proc.pid, name) for name in ("api-server", "scheduler", "triggerer")]
        info = stack.read_state(base)
        assert info is not None
        os.kill(proc.pid, signal.SIGTERM)  # Ctrl-C's SIGINT does the same
        assert proc.wait(timeout=120) == 0, out.text[-3000:]
        assert out.text.rstrip().endswith("stopped")
        gone = time.monotonic() + 30
        while any(stack.pid_alive(pid) for pid in [*components, info.s3_pid, info.pg_pid]):
            assert time.monotonic() < gone, "a process outlived e2e3d airflow"
            time.sleep(0.2)
        assert stack.read_state(base) is None  # the stack it started was stopped with it
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
        stack.stop_stack(base)
