"""The lifecycle on Airflow's CeleryExecutor with two workers that share neither a hostname nor a disk:
each runs in its own UTS + mount namespace with a private tmpfs as its data root. The DAG's tasks are
pinned to the two hosts' queues so the run crosses between them, and only object storage carries files."""

from __future__ import annotations

import os
import uuid

import pytest

from e2e3d_provider.core.layout import work_prefix
from e2e3d_provider.devstack.airflow_deployment import AirflowDeployment, write_pinned_lifecycle
from e2e3d_provider.devstack.demo import SAMPLE_DIR
from e2e3d_provider.example_dags import DAGS_DIR
from e2e3d_provider.lifecycle.inputs.ingest import ingest
from e2e3d_provider.lifecycle.results.published import fetch_published, read_published

pytestmark = [pytest.mark.slow, pytest.mark.one_server, pytest.mark.timeout(900)]

#: where each task runs: the reconstruction and the publish on host b, the rest on host a
ON_B = ("reconstruct", "upload_results", "archive")


def test_the_lifecycle_runs_across_two_celery_workers_that_share_no_disk(
    stack_info, connections, storage, metadata, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if stack_info is None:
        pytest.skip("the Celery deployment runs on the embedded stack (its PostgreSQL holds the broker)")
    base = tmp_path_factory.mktemp("celery-deployment")
    write_pinned_lifecycle(base / "dags", DAGS_DIR / "e2e3d_reconstruction.py", dict.fromkeys(ON_B, "host_b"), "host_a")
    dataset, job_id = f"ds-{uuid.uuid4().hex[:8]}", f"hosts-{uuid.uuid4().hex[:8]}"
    ingest(storage, SAMPLE_DIR, dataset)
    deployment = AirflowDeployment(
        stack_info,
        base / "home",
        [base / "dags"],
        base / "data",
        owner_pid=os.getpid(),
        workers={"worker-a": ["host_a"], "worker-b": ["host_b"]},
    )
    with deployment:
        deployment.wait_for_dag("e2e3d_reconstruction", timeout=180)
        deployment.unpause("e2e3d_reconstruction")
        run_id = deployment.trigger("e2e3d_reconstruction", {"dataset": dataset, "job_id": job_id})
        state = deployment.wait_for_run("e2e3d_reconstruction", run_id, timeout=600)
        instances = deployment.task_instances("e2e3d_reconstruction", run_id)
        hosts = {ti["task_id"]: ti.get("hostname") for ti in instances if ti["state"] == "success"}
        assert state == "success", {ti["task_id"]: ti["state"] for ti in instances}
        for task_id, hostname in hosts.items():
            assert hostname == ("worker-b" if task_id in ON_B else "worker-a"), hosts
        assert set(hosts.values()) == {"worker-a", "worker-b"}
        for hostname in deployment.workers:  # their data roots were private tmpfs: empty from here
            assert list(deployment.worker_root(hostname).iterdir()) == []
    manifest = read_published(storage, "output", job_id).manifest
    assert {e.role for e in manifest.files} >= {"original", "lod", "web"}
    fetched = fetch_published(storage, job_id, base / "reader")  # every byte against the manifest's sha256
    assert fetched.files == len(manifest.files)
    assert storage.list_keys("output", work_prefix(job_id, manifest.stamp)) == []
    job = metadata.get_job(job_id)
    assert job is not None and job["status"] == "archived", job
