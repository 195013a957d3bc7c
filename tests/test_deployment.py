"""A real Airflow deployment (api-server, scheduler, dag-processor, triggerer; LocalExecutor) on the
embedded stack, driven only through Airflow's REST API, as an operator of the platform would."""

from __future__ import annotations

import ipaddress
import time
import uuid
from pathlib import Path

import pytest

from e2e3d_provider.devstack.airflow_deployment import AirflowDeployment

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "e2e3d_provider/devstack/sample_data/terrain"


def _ingest(storage, dataset: str) -> None:
    from e2e3d_provider.lifecycle.ingest import ingest

    ingest(storage, SAMPLE_DIR, dataset)


def test_every_component_listens_on_loopback_only(airflow_deployment: AirflowDeployment) -> None:
    addresses = airflow_deployment.listening_addresses()
    assert ("127.0.0.1", airflow_deployment.port) in addresses
    assert all(ipaddress.ip_address(host).is_loopback for host, _ in addresses), addresses
    health = airflow_deployment.health()
    assert {health[part]["status"] for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")} == {
        "healthy"
    }


def test_reconstruction_dag_runs_end_to_end_through_the_rest_api(airflow_deployment, storage, metadata) -> None:
    _ingest(storage, "terrain")
    job_id = f"rest-{uuid.uuid4().hex[:10]}"
    airflow_deployment.wait_for_dag("e2e3d_reconstruction")
    airflow_deployment.unpause("e2e3d_reconstruction")
    run_id = airflow_deployment.trigger("e2e3d_reconstruction", {"dataset": "terrain", "job_id": job_id})
    state = airflow_deployment.wait_for_run("e2e3d_reconstruction", run_id, timeout=180)
    states = airflow_deployment.task_states("e2e3d_reconstruction", run_id)
    assert state == "success", states
    assert states["archive"] == "success" and states["mark_failed"] == "skipped", states
    job = metadata.get_job(job_id)
    assert job is not None and job["status"] in ("succeeded", "archived"), job
    assert storage.get_bytes("output", f"{job_id}/SUCCESS") is not None


def test_deferrable_sensors_resume_in_the_triggerer(airflow_deployment, storage) -> None:
    dataset, job_id = f"ds-{uuid.uuid4().hex[:8]}", f"defer-{uuid.uuid4().hex[:8]}"
    _ingest(storage, dataset)
    dag_id = "e2e3d_test_deferrable"
    airflow_deployment.wait_for_dag(dag_id)
    airflow_deployment.unpause(dag_id)
    run_id = airflow_deployment.trigger(dag_id, {"dataset": dataset, "job_id": job_id})
    seen: dict[str, set[str | None]] = {}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # the marker sensor must be waiting in the triggerer first
        for task_id, state in airflow_deployment.task_states(dag_id, run_id).items():
            seen.setdefault(task_id, set()).add(state)
        if "deferred" in seen.get("results_ready", ()):
            break
        time.sleep(0.5)
    assert "deferred" in seen.get("results_ready", ()), seen
    time.sleep(2)
    storage.put_bytes("output", f"{job_id}/SUCCESS", b"{}")
    state = airflow_deployment.wait_for_run(dag_id, run_id, timeout=90)
    assert state == "success", airflow_deployment.task_states(dag_id, run_id)
    log = airflow_deployment.task_log(dag_id, run_id, "results_ready")
    assert "Pausing task as DEFERRED" in log  # the worker handed the wait to the triggerer ...
    assert "SuccessMarkerTrigger" in log and "Trigger fired event" in log  # ... which ran the trigger


def test_maintenance_tasks_are_listed_with_their_edges(airflow_deployment) -> None:
    airflow_deployment.wait_for_dag("e2e3d_maintenance")
    body = airflow_deployment.get("/api/v2/dags/e2e3d_maintenance/tasks")
    tasks = {task["task_id"]: task["downstream_task_ids"] for task in body["tasks"]}
    assert len(tasks) == 5 and body["total_entries"] == 5, tasks
    assert all(isinstance(downstream, list) and set(downstream) <= set(tasks) for downstream in tasks.values())


def test_the_results_api_is_mounted_in_the_real_api_server(airflow_deployment: AirflowDeployment) -> None:
    health = airflow_deployment.get("/e2e3d/api/health")  # the plugin, loaded by the api-server process
    assert health["status"] == "ok" and health["storage"]["ok"] and health["metadata"]["ok"], health
