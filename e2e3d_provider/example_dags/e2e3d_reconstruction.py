"""E2E3D reconstruction: one job from input images to archived, verified results.

Trigger from the UI ("Trigger DAG w/ config") with ``{"dataset": "...", "job_id": "..."}``;
``job_id`` defaults to a readable ``<dataset>-<stamp>-<6 hex>``. Flow:

    prepare -> input_present -> stage_in -> reconstruct -> right_size -> upload_results -> record_succeeded
            -> archive -> cleanup (all done, if prepare succeeded);  mark_failed (one_failed: job failed)

``right_size`` writes level-of-detail, web and tiled variants beside the results (``right_size=false`` turns
it off; ``right_size_settings`` overrides its thresholds), so ``upload_results`` publishes originals and
variants under one manifest and one SUCCESS.

XComs carry the paths as native values (``prepare`` and ``stage_in`` push each field, so
``stage_in.output["output_dir"]`` is a str, never a rendered "None"); PostgreSQL gets the job's status, inventory and
transfers. ``reconstruct`` is the demo reconstruction: replace it with your own (docs/dags.md,
"Replacing the demo reconstruction").
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from typing import Any

# [START e2e3d_howto_imports]
from airflow.sdk import TriggerRule, dag, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from e2e3d_provider.core.layout import derived_job_id, validate_id
from e2e3d_provider.exceptions import RunConflictError, RunFinishedError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.lifecycle.results.record import begin_run
from e2e3d_provider.lifecycle.worker.workspace import Workspace
from e2e3d_provider.operators.archive import ArchiveOperator
from e2e3d_provider.operators.cleanup import CleanupOperator
from e2e3d_provider.operators.metadata_record import MetadataRecordOperator
from e2e3d_provider.operators.params import form_param, id_param, right_size_settings_param
from e2e3d_provider.operators.rightsize import RightSizeOperator
from e2e3d_provider.operators.run_context import run_is_live, run_stamp
from e2e3d_provider.operators.stage_in import StageInOperator
from e2e3d_provider.operators.upload_results import UploadResultsOperator
from e2e3d_provider.sensors.input_presence import InputPresenceSensor

# [END e2e3d_howto_imports]

#: the trigger form's sections
JOB, INPUT, RIGHT_SIZING, CLEAN_UP = "Job", "Input", "Right-sizing", "Clean-up"


@dag(
    dag_id="e2e3d_reconstruction",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    tags=["e2e3d"],
    doc_md=__doc__,
    render_template_as_native_obj=True,  # "{{ params.min_files }}" arrives as an int, a flag as a bool
    default_args={"retries": 1, "retry_delay": timedelta(seconds=10)},
    params={
        "dataset": id_param(
            "terrain",
            kind="dataset id",
            title="Dataset",
            description_md="The dataset in the `input` bucket to reconstruct (`e2e3d ingest` puts one there).",
            section=JOB,
        ),
        "job_id": id_param(
            None,
            kind="job id",
            title="Job id",
            description_md=(
                "Names the job's results in `output/<job_id>/`. Empty: `<dataset>-<stamp>-<6 hex of the run id>`. "
                "A job id that already has a run in progress is refused."
            ),
            section=JOB,
            optional=True,  # the form marks a param required unless it admits null
        ),
        "models_prefix": form_param(
            None,
            title="Models prefix",
            description_md="Optional: a prefix of the `models` bucket to stage too; it must hold objects.",
            section=JOB,
            type=["null", "string"],
        ),
        "min_files": form_param(
            1,
            title="Minimum images",
            description_md="`input_present` waits until the dataset holds at least this many images.",
            section=INPUT,
            type="integer",
            minimum=1,
        ),
        "stable_for": form_param(
            0,
            title="Stable for (seconds)",
            description_md="`input_present` also waits until the dataset has not changed for this many seconds.",
            section=INPUT,
            type="number",
            minimum=0,
        ),
        "right_size": form_param(
            True,
            title="Right-size",
            description_md="Publish level-of-detail, web and tiled variants beside the results.",
            section=RIGHT_SIZING,
            type="boolean",
        ),
        "right_size_settings": right_size_settings_param(section=RIGHT_SIZING),
        "remove_output_after_archive": form_param(
            False,
            title="Remove output after archive",
            description_md=(
                "Once `archive` has copied and verified the job in the `archive` bucket, delete it from `output` "
                "(the results API then serves the archived copy)."
            ),
            section=CLEAN_UP,
            type="boolean",
        ),
        "remove_run_dir": form_param(
            False,
            title="Remove the run directory",
            description_md="Delete the run's local directory on the worker at the end (its temp dir always goes).",
            section=CLEAN_UP,
            type="boolean",
        ),
    },
)
def e2e3d_reconstruction() -> None:
    @task(retries=0, multiple_outputs=True)
    def prepare(params: dict[str, Any], run_id: str, **context: Any) -> dict[str, Any]:
        """Validate the ids, fix the run stamp and record the job as running."""
        dataset = validate_id(params["dataset"], "dataset")
        stamp = run_stamp(context)
        job_id = (
            validate_id(params["job_id"], "job_id") if params.get("job_id") else derived_job_id(dataset, stamp, run_id)
        )
        try:
            begin_run(
                MetadataHook(),
                job_id,
                stamp,
                dataset,
                run_id,
                context["dag"].dag_id,
                run_is_live=partial(run_is_live, context["ti"]),
            )
        except RunFinishedError as err:  # a Clear of a finished run: a no-op that says why, first in its log
            context["task"].log.warning("skipped: %s", err)
            raise AirflowSkipException(str(err)) from err
        except RunConflictError as err:  # another DAG run holds the job: fail at once, saying why first
            context["task"].log.error("refused: %s", err)
            raise AirflowFailException(str(err)) from err
        return {
            "dataset": dataset,
            "job_id": job_id,
            "stamp": stamp,
            "models_prefix": str(params.get("models_prefix") or "") or None,
        }

    prepared = prepare()
    dataset, job_id, stamp = prepared["dataset"], prepared["job_id"], prepared["stamp"]

    # [START e2e3d_howto_sensor_input_presence]
    input_present = InputPresenceSensor(
        task_id="input_present",
        dataset=dataset,
        min_files="{{ params.min_files }}",
        stable_for="{{ params.stable_for }}",
        poke_interval=10,
        timeout=3600,
        mode="reschedule",
    )
    # [END e2e3d_howto_sensor_input_presence]
    # [START e2e3d_howto_operator_stage_in]
    stage_in = StageInOperator(
        task_id="stage_in",
        dataset=dataset,
        job_id=job_id,
        stamp=stamp,
        models_prefix=prepared["models_prefix"],
        metadata_conn_id=MetadataHook.default_conn_name,
    )
    # [END e2e3d_howto_operator_stage_in]

    # [START e2e3d_howto_decorator_workspace]
    @task.e2e3d_workspace(settle_seconds=1.0)
    def reconstruct(workspace: Workspace) -> dict[str, Any]:
        """The demo reconstruction (replace it with yours): input images -> mesh, texture, point cloud. It runs
        on any worker in a workspace: the input from this host's read-through cache, its results written back
        to object storage while it runs and handed on from there (the XCom ``handoff`` says where)."""
        from e2e3d_provider.devstack.reconstruct import reconstruct as run

        return run(workspace.input_dir, workspace.run_dir, workspace.temp_dir)

    statistics = reconstruct(stage_in.output)
    # [END e2e3d_howto_decorator_workspace]
    # [START e2e3d_howto_operator_rightsize]
    right_size = RightSizeOperator(
        task_id="right_size",
        run_dir=stage_in.output["output_dir"],
        origin_host=stage_in.output["host"],
        job_id=job_id,
        stamp=stamp,
        enabled="{{ params.right_size }}",
        settings="{{ params.right_size_settings }}",
    )
    # [END e2e3d_howto_operator_rightsize]
    # [START e2e3d_howto_operator_upload_results]
    upload = UploadResultsOperator(
        task_id="upload_results",
        job_id=job_id,
        stamp=stamp,
        run_dir=stage_in.output["output_dir"],
        origin_host=stage_in.output["host"],
        statistics=statistics,
        metadata_conn_id=MetadataHook.default_conn_name,
    )
    # [END e2e3d_howto_operator_upload_results]
    # [START e2e3d_howto_operator_metadata_record]
    record = MetadataRecordOperator(
        task_id="record_succeeded",
        job_id=job_id,
        stamp=stamp,
        dataset=dataset,
        status="succeeded",
        upload=upload.output,
    )
    # [END e2e3d_howto_operator_metadata_record]
    # [START e2e3d_howto_operator_archive]
    archive = ArchiveOperator(
        task_id="archive", job_id=job_id, stamp=stamp, remove_source="{{ params.remove_output_after_archive }}"
    )
    # [END e2e3d_howto_operator_archive]
    # [START e2e3d_howto_operator_cleanup]
    # cleanup runs once the run is done, failed or not, but only when prepare succeeded (it is an upstream: job_id
    # and stamp are its XComs): a run prepare skipped (a Clear of a finished run) or refused (a conflict) has
    # nothing of its own to clean, and pulling XComs prepare never pushed is an error line per pull
    cleanup = CleanupOperator(
        task_id="cleanup",
        job_id=job_id,
        stamp=stamp,
        remove_run_dir="{{ params.remove_run_dir }}",
        trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS,
    )
    # [END e2e3d_howto_operator_cleanup]

    @task(trigger_rule=TriggerRule.ONE_FAILED, retries=0)
    # [START e2e3d_howto_hook_metadata_record_failed]
    def mark_failed(**context: Any) -> None:
        """Record the job as failed (naming the failed tasks) and fail the run."""
        ti, dag_run = context["ti"], context["dag_run"]
        try:
            states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[dag_run.run_id]).get(dag_run.run_id, {})
            failed = sorted(t for t, s in states.items() if s == "failed" and t != ti.task_id)  # not upstream_failed
        except Exception:  # older task SDKs: the failure is still recorded, without task names
            failed = []
        prepared_ids = ti.xcom_pull(task_ids="prepare")
        message = f"failed tasks: {', '.join(failed) or 'unknown'} (run {dag_run.run_id})"
        if prepared_ids:
            MetadataHook().record_job(
                prepared_ids["job_id"], prepared_ids["stamp"], prepared_ids["dataset"], "failed", error=message
            )
        raise AirflowFailException(f"job failed: {message}")

    # [END e2e3d_howto_hook_metadata_record_failed]

    # [START e2e3d_howto_wiring]
    work = [prepared, input_present, stage_in, statistics, right_size, upload, record, archive]
    prepared >> input_present >> stage_in >> statistics >> right_size >> upload >> record >> archive >> cleanup
    prepared >> cleanup  # already so through its XComs; said here since its trigger rule counts on it
    work >> mark_failed()
    # [END e2e3d_howto_wiring]


#: the DAG object, by name: a deployment that pins tasks to per-host queues sets them on its tasks
lifecycle_dag = e2e3d_reconstruction()
