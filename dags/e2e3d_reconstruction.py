"""E2E3D reconstruction: one job from input images to archived, verified results.

Trigger from the UI ("Trigger DAG w/ config") with ``{"dataset": "...", "job_id": "..."}``;
``job_id`` defaults to one derived from the run id. Flow:

    prepare -> input_present -> stage_in -> reconstruct -> upload_results -> record_succeeded -> archive
                                                                                       cleanup (all_done)
                                                                   mark_failed (one_failed: job failed)

XComs carry the paths (``stage_in``'s dict); PostgreSQL gets the job's status, inventory and
transfers. ``reconstruct`` is the demo reconstruction: replace it with your own (see README).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Param, TriggerRule, dag, task
from airflow.sdk.exceptions import AirflowFailException

from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.layout import ID_PATTERN, job_id_from_run_id, validate_id
from e2e3d_provider.operators.archive import ArchiveOperator
from e2e3d_provider.operators.cleanup import CleanupOperator
from e2e3d_provider.operators.metadata_record import MetadataRecordOperator
from e2e3d_provider.operators.run_context import run_stamp
from e2e3d_provider.operators.stage_in import StageInOperator
from e2e3d_provider.operators.upload_results import UploadResultsOperator
from e2e3d_provider.sensors.input_presence import InputPresenceSensor

MINIO_CONN_ID = "minio_default"
METADATA_CONN_ID = "e2e3d_metadata"


def pulled(task_id: str, field: str) -> str:
    """A template for one field of a task's XCom dict."""
    return "{{ ti.xcom_pull(task_ids='" + task_id + "')['" + field + "'] }}"


@dag(
    dag_id="e2e3d_reconstruction",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    tags=["e2e3d"],
    doc_md=__doc__,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=10)},
    params={
        "dataset": Param("terrain", type="string", pattern=ID_PATTERN.pattern, description="dataset id in `input`"),
        "job_id": Param("", type="string", description="job id; empty: derived from the run id"),
        "models_prefix": Param("", type="string", description="prefix in `models` to stage too (optional)"),
        "min_files": Param(1, type="integer", minimum=1, description="images required before staging"),
        "stable_for": Param(0, type="number", minimum=0, description="seconds the input must be unchanged"),
        "remove_output_after_archive": Param(False, type="boolean"),
        "remove_run_dir": Param(False, type="boolean", description="delete the local run dir at the end"),
    },
)
def e2e3d_reconstruction() -> None:
    @task(retries=0)
    def prepare(params: dict[str, Any], run_id: str, **context: Any) -> dict[str, str]:
        """Validate the ids, fix the run stamp and record the job as running."""
        dataset = validate_id(params["dataset"], "dataset")
        job_id = validate_id(params["job_id"], "job_id") if params.get("job_id") else job_id_from_run_id(run_id)
        stamp = run_stamp(context)
        MetadataHook(METADATA_CONN_ID).record_job(job_id, stamp, dataset, "running")
        return {"dataset": dataset, "job_id": job_id, "stamp": stamp}

    prepared = prepare()
    dataset, job_id, stamp = pulled("prepare", "dataset"), pulled("prepare", "job_id"), pulled("prepare", "stamp")

    input_present = InputPresenceSensor(task_id="input_present", dataset=dataset, min_files="{{ params.min_files }}",
                                        stable_for="{{ params.stable_for }}", poke_interval=10, timeout=3600,
                                        mode="reschedule", minio_conn_id=MINIO_CONN_ID)
    stage_in = StageInOperator(task_id="stage_in", dataset=dataset, job_id=job_id, stamp=stamp,
                               models_prefix="{{ params.models_prefix }}", minio_conn_id=MINIO_CONN_ID,
                               metadata_conn_id=METADATA_CONN_ID)

    @task
    def reconstruct(staged: dict[str, Any]) -> dict[str, Any]:
        """The demo reconstruction (replace with yours): input images -> mesh, texture, point cloud."""
        from e2e3d_provider.operators.local_paths import require_local_dir
        from e2e3d_provider.reconstruct import ReconstructionError
        from e2e3d_provider.reconstruct import reconstruct as run

        input_dir = require_local_dir(staged["input_dir"], staged["host"], "input directory")
        run_dir = require_local_dir(staged["output_dir"], staged["host"], "run directory")
        try:
            return run(input_dir, run_dir, Path(staged["temp_dir"]))
        except ReconstructionError as err:  # bad input: a retry cannot help
            raise AirflowFailException(str(err)) from err

    statistics = reconstruct(stage_in.output)
    upload = UploadResultsOperator(task_id="upload_results", job_id=job_id, stamp=stamp,
                                   run_dir=pulled("stage_in", "output_dir"), origin_host=pulled("stage_in", "host"),
                                   statistics=statistics, minio_conn_id=MINIO_CONN_ID,
                                   metadata_conn_id=METADATA_CONN_ID)
    record = MetadataRecordOperator(task_id="record_succeeded", job_id=job_id, stamp=stamp, dataset=dataset,
                                    status="succeeded", upload=upload.output, minio_conn_id=MINIO_CONN_ID,
                                    metadata_conn_id=METADATA_CONN_ID)
    archive = ArchiveOperator(task_id="archive", job_id=job_id,
                              remove_source="{{ params.remove_output_after_archive }}",
                              minio_conn_id=MINIO_CONN_ID, metadata_conn_id=METADATA_CONN_ID)
    cleanup = CleanupOperator(task_id="cleanup", job_id=job_id, stamp=stamp,
                              remove_run_dir="{{ params.remove_run_dir }}")

    @task(trigger_rule=TriggerRule.ONE_FAILED, retries=0)
    def mark_failed(**context: Any) -> None:
        """Record the job as failed (naming the failed tasks) and fail the run."""
        ti, dag_run = context["ti"], context["dag_run"]
        try:
            states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[dag_run.run_id]).get(dag_run.run_id, {})
            failed = sorted(t for t, s in states.items() if s in ("failed", "upstream_failed") and t != ti.task_id)
        except Exception:  # older task SDKs: the failure is still recorded, without task names
            failed = []
        prepared_ids = ti.xcom_pull(task_ids="prepare")
        message = f"failed tasks: {', '.join(failed) or 'unknown'} (run {dag_run.run_id})"
        if prepared_ids:
            MetadataHook(METADATA_CONN_ID).record_job(prepared_ids["job_id"], prepared_ids["stamp"],
                                                      prepared_ids["dataset"], "failed", error=message)
        raise AirflowFailException(f"job failed: {message}")

    work = [prepared, input_present, stage_in, statistics, upload, record, archive]
    prepared >> input_present >> stage_in >> statistics >> upload >> record >> archive >> cleanup
    work >> mark_failed()


e2e3d_reconstruction()
