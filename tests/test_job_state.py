"""A job's state in PostgreSQL follows its DAG run as Airflow changes it: a Clear restarts a failed job
(timed from the restart), a run ended from outside fails the job it left running. Here the DAG-run
changes come through Airflow's own listener manager with real ``DagRun`` objects; the deployment tests
(tests/test_deployment.py) drive the same through a real scheduler and api-server."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from e2e3d_provider.hooks.metadata import SCHEMA, MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.maintenance.reconcile import follow_dag_run
from e2e3d_provider.lifecycle.results.publish import publish_run
from e2e3d_provider.lifecycle.results.record import begin_run, record_job_run
from tests.helpers import write_files

DAG_ID = "e2e3d_reconstruction"
STAMP = "20261205T080000Z"


def failed_job(metadata: MetadataHook, job_id: str, run_id: str) -> dict:
    """A job its DAG run started and then failed (``mark_failed``), as Airflow left it before a Clear."""
    begin_run(metadata, job_id, STAMP, "terrain", run_id, DAG_ID)
    return metadata.record_job(job_id, STAMP, "terrain", "failed", error="failed tasks: stage_in (run x)")


def dag_run(run_id: str, state: str, start: datetime, end: datetime | None = None):
    """A real Airflow DagRun as the scheduler or the api-server hands it to the listeners."""
    from airflow.models.dagrun import DagRun

    run = DagRun(dag_id=DAG_ID, run_id=run_id, state=state, start_date=start)
    run.end_date = end
    return run


def test_a_clear_restarts_a_failed_job_timed_from_the_restart(metadata: MetadataHook, unique_id: str) -> None:
    before = failed_job(metadata, unique_id, "run-1")
    restart = datetime.now(UTC)  # the DAG run's new start_date, after the failure

    assert follow_dag_run(metadata, DAG_ID, "run-1", "running", at=restart) == [unique_id]
    job = metadata.get_job(unique_id, STAMP)
    assert job["status"] == "running" and job["error"] is None and job["finished_at"] is None
    assert job["started_at"] == restart > before["finished_at"]

    metadata.record_job(unique_id, STAMP, "terrain", "failed", error="the re-run failed too")
    # the restart's event arriving again (late, or from another process) never undoes that failure
    assert follow_dag_run(metadata, DAG_ID, "run-1", "running", at=restart) == []
    assert metadata.get_job(unique_id, STAMP)["status"] == "failed"


def test_a_run_ended_from_outside_fails_only_the_jobs_it_left_running(metadata: MetadataHook, unique_id: str) -> None:
    start = datetime.now(UTC) - timedelta(minutes=1)
    marked, succeeded, other, later = (f"{unique_id}-{n}" for n in ("marked", "succ", "other", "later"))
    begin_run(metadata, marked, STAMP, "terrain", "run-marked", DAG_ID)
    begin_run(metadata, succeeded, STAMP, "terrain", "run-succ", DAG_ID)
    begin_run(metadata, other, STAMP, "terrain", "run-other", DAG_ID)
    failed_job(metadata, later, "run-later")
    end = datetime.now(UTC)
    follow_dag_run(metadata, DAG_ID, "run-later", "running", at=end + timedelta(seconds=5))  # a later Clear

    note = "Dag Run's state was manually set to `failed`."
    assert follow_dag_run(metadata, DAG_ID, "run-marked", "failed", at=end, note=note) == [marked]
    job = metadata.get_job(marked, STAMP)
    assert job["status"] == "failed"
    assert job["error"] == f"DAG run run-marked of {DAG_ID} ended failed without finishing the job: {note}"
    assert follow_dag_run(metadata, DAG_ID, "run-succ", "success", at=end) == [succeeded]
    assert "ended success without finishing the job" in metadata.get_job(succeeded, STAMP)["error"]
    assert follow_dag_run(metadata, DAG_ID, "run-later", "failed", at=end) == []  # its restart came after
    assert metadata.get_job(later, STAMP)["status"] == "running"
    assert metadata.get_job(other, STAMP)["status"] == "running"  # another DAG run's job
    assert follow_dag_run(metadata, "another_dag", "run-other", "failed", at=end) == []  # same run id, other DAG
    assert follow_dag_run(metadata, DAG_ID, "run-marked", "success", at=start) == []  # nothing left running


def test_a_rerun_recorded_succeeded_is_timed_from_its_dag_runs_restart(
    metadata: MetadataHook, storage: StorageHook, unique_id: str, tmp_path: Path
) -> None:
    """Without the listener (a component that missed the restart), ``record_succeeded`` found the job
    ``failed`` and restarted its clock on the spot: a 0.02 s duration. It is timed from the DAG run's start."""
    failed_job(metadata, unique_id, "run-1")
    restart = datetime.now(UTC).replace(microsecond=0)
    write_files(tmp_path / "run", {"mesh/model.obj": b"v 0 0 0\n"})
    publish_run(storage, tmp_path / "run", unique_id, STAMP, "output")

    job = record_job_run(metadata, storage, unique_id, STAMP, "terrain", "succeeded", started_at=restart)
    assert job["status"] == "succeeded" and job["started_at"] == restart < job["finished_at"]


def test_the_plugin_registers_the_listener_with_airflow(metadata: MetadataHook, unique_id: str) -> None:
    from airflow.listeners.listener import get_listener_manager

    from e2e3d_provider.listeners.dag_runs import DAG_RUN_JOBS

    listeners = get_listener_manager()  # the manager the scheduler and the api-server call
    assert listeners.pm.is_registered(DAG_RUN_JOBS)
    failed_job(metadata, unique_id, "run-clear")
    begin_run(metadata, f"{unique_id}-m", STAMP, "terrain", "run-mark", DAG_ID)
    restart = datetime.now(UTC)

    listeners.hook.on_dag_run_running(dag_run=dag_run("run-clear", "running", restart), msg="started")
    listeners.hook.on_dag_run_failed(
        dag_run=dag_run("run-mark", "failed", restart, restart + timedelta(seconds=1)),
        msg="Dag Run's state was manually set to `failed`.",
    )
    assert DAG_RUN_JOBS.wait_idle(timeout=30)
    cleared = metadata.get_job(unique_id, STAMP)
    assert cleared["status"] == "running" and cleared["started_at"] == restart
    marked = metadata.get_job(f"{unique_id}-m", STAMP)
    assert marked["status"] == "failed" and "manually set to `failed`" in marked["error"]


def test_the_listener_never_fails_airflow_when_postgresql_cannot_be_reached(
    metadata: MetadataHook, unique_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    from e2e3d_provider.listeners.dag_runs import DagRunJobs

    begin_run(metadata, unique_id, STAMP, "terrain", "run-1", DAG_ID)
    listener = DagRunJobs("e2e3d_no_such_connection")
    now = datetime.now(UTC)
    with caplog.at_level(logging.WARNING, logger="e2e3d_provider.listeners.dag_runs"):
        listener.on_dag_run_failed(dag_run=dag_run("run-1", "failed", now, now), msg="task_failure")
        assert listener.wait_idle(timeout=30)
    assert "DAG run run-1 of e2e3d_reconstruction became failed, but its jobs could not be updated" in caplog.text
    assert metadata.get_job(unique_id, STAMP)["status"] == "running"  # the daily reconcile's to catch


def test_jobs_are_found_by_their_dag_run_through_an_index(metadata: MetadataHook) -> None:
    with metadata.transaction() as cur:
        cur.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = %s", (SCHEMA, "jobs_dag_run_idx")
        )
        (definition,) = cur.fetchone()
    assert "statistics ->> 'dag_id'" in definition and "statistics ->> 'dag_run_id'" in definition
