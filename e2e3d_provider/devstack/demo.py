"""``e2e3d demo``: the whole lifecycle on the embedded stack, in one command.

Starts the stack, bootstraps buckets and schema, ingests the sample dataset shipped in the
package, runs the ``e2e3d_reconstruction`` DAG with ``dag.test()`` in a temporary AIRFLOW_HOME,
prints the job's status, statistics, object keys and pre-signed URLs, and stops the stack
(unless ``keep_stack``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from e2e3d_provider.core.layout import MESH_RELPATH, POINTCLOUD_RELPATH, TEXTURE_RELPATH, make_stamp
from e2e3d_provider.devstack import stack

SAMPLE_DATASET = "terrain"
SAMPLE_DIR = Path(__file__).parent / "sample_data" / SAMPLE_DATASET
DAG_FILE = "e2e3d_reconstruction.py"


def dags_dir() -> Path:
    """The repository's ``dags/`` folder (beside the package in a checkout / editable install)."""
    candidate = Path(__file__).resolve().parents[2] / "dags"
    if not (candidate / DAG_FILE).exists():
        raise FileNotFoundError(
            f"cannot find {DAG_FILE} in {candidate}: run the demo from a checkout of the "
            "repository installed with `pip install -e .`"
        )
    return candidate


def _say(message: str, started: float) -> None:
    print(f"[{time.monotonic() - started:5.1f}s] {message}", flush=True)


def _load_dag(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("e2e3d_demo_dag", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.e2e3d_reconstruction()


def _report(storage: Any, metadata: Any, job_id: str, state: str) -> int:
    """Print the job as PostgreSQL and the bucket hold it, and fetch its results by pre-signed URL."""
    job = metadata.get_job(job_id)
    if job is None or state != "success":
        print(f"the demo job did not succeed: {json.dumps(job, default=str, indent=2)}", file=sys.stderr)
        return 1
    print("\njob (from PostgreSQL):")
    for field in (
        "job_id",
        "stamp",
        "dataset",
        "status",
        "files",
        "bytes",
        "result_bucket",
        "result_prefix",
        "manifest_key",
        "archive_key",
        "started_at",
        "finished_at",
    ):
        print(f"  {field:<14} {job[field]}")
    print(f"  {'statistics':<14} {json.dumps(job['statistics'], sort_keys=True)}")
    print(f"  {'transfers':<14} {json.dumps(metadata.transfer_summary())}")
    print(f"\nobjects in output/{job_id}/:")
    for obj in storage.list_objects("output", f"{job_id}/"):
        print(f"  {obj.key}  ({obj.size} bytes)")
    print("\npre-signed download URLs (valid 24 h), each fetched once with a plain HTTP client:")
    manifest = {
        entry["path"]: entry for entry in json.loads(storage.get_bytes("output", f"{job_id}/metadata.json"))["files"]
    }
    for label, rel in (("mesh", MESH_RELPATH), ("texture", TEXTURE_RELPATH), ("point cloud", POINTCLOUD_RELPATH)):
        url = storage.presigned_get("output", f"{job_id}/{rel}")
        with urllib.request.urlopen(url, timeout=30) as response:
            body = response.read()
        ok = hashlib.sha256(body).hexdigest() == manifest[rel]["sha256"]
        print(
            f"  {label:<12} {url}\n  {'':<12} -> {len(body)} bytes, sha256 "
            f"{'matches the manifest' if ok else 'DOES NOT MATCH the manifest'}"
        )
        if not ok:
            return 1
    return 0


def _run_on_workers(info: Any, work: Path, workers: int, job_id: str, started: float) -> str:
    """The lifecycle DAG on a real Airflow with CeleryExecutor and ``workers`` workers, each in its own
    namespace (own hostname, private data root), the run's tasks spread over them; returns the run state."""
    from e2e3d_provider.devstack.airflow_deployment import AirflowDeployment, write_pinned_lifecycle

    hosts = [f"worker-{n}" for n in range(1, workers + 1)]
    tasks = ("reconstruct", "right_size", "upload_results", "record_succeeded", "archive")
    queues = {task: f"queue_{hosts[(i + 1) % workers].replace('-', '_')}" for i, task in enumerate(tasks)}
    folder = write_pinned_lifecycle(work / "dags", dags_dir() / DAG_FILE, queues, "queue_worker_1").parent
    _say(f"starting Airflow (CeleryExecutor) with {workers} workers in their own namespaces", started)
    deployment = AirflowDeployment(
        info,
        work / "airflow-deployment",
        [folder],
        work / "data",
        owner_pid=os.getpid(),
        workers={host: [f"queue_{host.replace('-', '_')}"] for host in hosts},
    )
    with deployment:
        deployment.wait_for_dag("e2e3d_reconstruction", timeout=180)
        deployment.unpause("e2e3d_reconstruction")
        run_id = deployment.trigger("e2e3d_reconstruction", {"dataset": SAMPLE_DATASET, "job_id": job_id})
        _say(f"triggered job {job_id} through the REST API; waiting for it", started)
        state = deployment.wait_for_run("e2e3d_reconstruction", run_id, timeout=600)
        for ti in deployment.task_instances("e2e3d_reconstruction", run_id):
            print(f"  {ti['task_id']:<18} {ti['state'] or '':<9} on {ti.get('hostname') or '-'}")
    _say(f"DAG run {state}", started)
    return state


def run_demo(keep_stack: bool = False, stack_dir: Path | None = None, workers: int = 1) -> int:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="e2e3d-demo-"))
    base = Path(stack_dir) if stack_dir else (stack.default_stack_dir() if keep_stack else work / "stack")
    airflow_home = work / "airflow"
    airflow_home.mkdir()
    os.environ.update(
        {
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_dir()),
            "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", str(work)),
        }
    )
    _say(f"starting the local stack in {base} (SeaweedFS S3 + PostgreSQL on 127.0.0.1)", started)
    info = stack.start_stack(base, owner_pid=None if keep_stack else os.getpid())
    os.environ.update(info.env())
    try:
        _say(
            f"S3 at {info.s3_endpoint}, PostgreSQL at 127.0.0.1:{info.pg_port}; preparing Airflow's own database",
            started,
        )
        airflow = Path(sys.executable).parent / "airflow"
        migrated = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True)
        if migrated.returncode != 0:
            print(migrated.stderr[-3000:], file=sys.stderr)
            return 1

        from e2e3d_provider.hooks.metadata import MetadataHook
        from e2e3d_provider.hooks.storage import StorageHook
        from e2e3d_provider.lifecycle.ingest import ingest

        storage, metadata = StorageHook(), MetadataHook()
        storage.bootstrap()
        metadata.migrate()
        _say(
            "buckets input/output/models/archive ready (versioning + lifecycle on output, models); schema ready",
            started,
        )
        uploaded = ingest(storage, SAMPLE_DIR, SAMPLE_DATASET)
        _say(
            f"ingested sample dataset '{SAMPLE_DATASET}': {uploaded.total_files} images, "
            f"{(uploaded.bytes + uploaded.skipped_bytes) / 1e3:.0f} kB",
            started,
        )

        job_id = f"demo-{make_stamp()}"
        if workers > 1:
            state = _run_on_workers(info, work, workers, job_id, started)
        else:
            _say(f"running DAG e2e3d_reconstruction for job {job_id} (dag.test)", started)
            dag = _load_dag(dags_dir() / DAG_FILE)
            dag_run = dag.test(run_conf={"dataset": SAMPLE_DATASET, "job_id": job_id})
            states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
            _say(f"DAG run {dag_run.state}: " + ", ".join(f"{t}={s}" for t, s in states.items()), started)
            state = str(dag_run.state)
        if _report(storage, metadata, job_id, state) != 0:
            return 1
        _say("done", started)
        if not keep_stack:
            print("\nthe stack stops now, and these URLs with it: rerun with --keep-stack to keep them working")
        else:
            print(
                f'\nthe stack keeps running: eval "$(e2e3d stack env{" --dir " + str(base) if stack_dir else ""})" '
                "to use it, `e2e3d stack down` to stop it"
            )
        return 0
    finally:
        if not keep_stack:
            stack.stop_stack(base)
