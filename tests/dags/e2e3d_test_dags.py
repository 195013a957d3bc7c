"""Small DAGs that run every E2E3D operator and sensor in real task runs (tests only)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from airflow.sdk import dag, task

from e2e3d_provider.operators.archive import ArchiveOperator
from e2e3d_provider.operators.cleanup import CleanupOperator
from e2e3d_provider.operators.metadata_record import MetadataRecordOperator
from e2e3d_provider.operators.stage_in import StageInOperator
from e2e3d_provider.operators.upload_results import UploadResultsOperator
from e2e3d_provider.sensors.input_presence import InputPresenceSensor
from e2e3d_provider.sensors.success_marker import SuccessMarkerSensor


def staged(field: str) -> str:
    """A template pulling one field of stage_in's XCom dict."""
    return "{{ ti.xcom_pull(task_ids='stage_in')['" + field + "'] }}"


PARAMS = {"dataset": "ds", "job_id": "job", "data_root": "/tmp/e2e3d-test", "models_prefix": ""}


@dag(
    dag_id="e2e3d_test_blocks",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params=PARAMS,
    default_args={"retries": 0},
)
def blocks() -> None:
    present = InputPresenceSensor(
        task_id="input_present", dataset="{{ params.dataset }}", min_files=3, poke_interval=1, timeout=60, mode="poke"
    )
    stage = StageInOperator(
        task_id="stage_in",
        dataset="{{ params.dataset }}",
        job_id="{{ params.job_id }}",
        data_root="{{ params.data_root }}",
        models_prefix="{{ params.models_prefix }}",
        metadata_conn_id="e2e3d_metadata",
    )

    @task
    def reconstruct(staged: dict) -> dict:
        out, temp = Path(staged["output_dir"]), Path(staged["temp_dir"])
        names = sorted(p.name for p in Path(staged["input_dir"]).rglob("*") if p.is_file())
        (temp / "scratch.bin").write_bytes(b"intermediate")
        (out / "mesh" / "reconstructed_mesh.obj").write_text(
            "mtllib reconstructed_mesh.mtl\n" + "".join(f"v {i} 0 0\n" for i in range(len(names)))
        )
        (out / "mesh" / "reconstructed_mesh.mtl").write_text("newmtl m\nmap_Kd ../textures/texture.png\n")
        (out / "textures" / "texture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + json.dumps(names).encode())
        (out / "pointcloud" / "pointcloud.ply").write_text(f"ply\nformat ascii 1.0\nelement vertex {len(names)}\n")
        (out / "logs" / "reconstruct.log").write_text("ok\n")
        return {"images": len(names)}

    stats = reconstruct(stage.output)
    upload = UploadResultsOperator(
        task_id="upload_results",
        job_id="{{ params.job_id }}",
        stamp=staged("stamp"),
        run_dir=staged("output_dir"),
        origin_host=staged("host"),
        statistics=stats,
        metadata_conn_id="e2e3d_metadata",
    )
    record = MetadataRecordOperator(
        task_id="record_succeeded",
        job_id="{{ params.job_id }}",
        stamp=staged("stamp"),
        dataset="{{ params.dataset }}",
        status="succeeded",
        upload=upload.output,
    )
    ready = SuccessMarkerSensor(
        task_id="results_ready", job_id="{{ params.job_id }}", mode="reschedule", poke_interval=1, timeout=60
    )
    archive = ArchiveOperator(task_id="archive", job_id="{{ params.job_id }}")
    cleanup = CleanupOperator(task_id="cleanup", temp_dir=staged("temp_dir"), data_root="{{ params.data_root }}")
    present >> stage >> stats >> upload >> record >> ready >> archive >> cleanup


@dag(
    dag_id="e2e3d_test_deferrable",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params=PARAMS,
    default_args={"retries": 0},
)
def deferrable() -> None:
    # [START e2e3d_howto_sensor_deferrable]
    InputPresenceSensor(
        task_id="input_present",
        dataset="{{ params.dataset }}",
        min_files=2,
        stable_for=2,
        poke_interval=1,
        timeout=60,
        deferrable=True,
    ) >> SuccessMarkerSensor(
        task_id="results_ready", job_id="{{ params.job_id }}", poke_interval=1, timeout=60, deferrable=True
    )
    # [END e2e3d_howto_sensor_deferrable]


@dag(
    dag_id="e2e3d_test_soft_fail",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params=PARAMS,
    default_args={"retries": 0},
)
def soft_fail() -> None:
    SuccessMarkerSensor(task_id="never_ready", job_id="{{ params.job_id }}", poke_interval=1, timeout=2, soft_fail=True)


blocks_dag = blocks()
deferrable_dag = deferrable()
soft_fail_dag = soft_fail()
