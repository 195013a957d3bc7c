"""``e2e3d demo``: the whole lifecycle on the embedded stack, in one command.

Starts the stack, bootstraps buckets and schema, ingests the sample dataset shipped in the
package, runs the ``e2e3d_reconstruction`` DAG with ``dag.test()`` in a temporary AIRFLOW_HOME,
prints one line per task as it ends (state, seconds, bytes moved, MB/s), a progress bar during transfers
(on a terminal), then the job's summary and its results fetched by pre-signed URL, and stops the stack
(unless ``keep_stack``). Airflow's own logs go to a file whose path is printed; the temporary
directories go at exit (with ``keep_stack`` they stay, and say where). Its last lines say where to look
at the job in the 3D viewer.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

from e2e3d_provider.core.layout import (
    BUCKET_OUTPUT,
    MESH_RELPATH,
    POINTCLOUD_RELPATH,
    TEXTURE_RELPATH,
    make_stamp,
    manifest_key,
    output_key,
)
from e2e3d_provider.core.transfer import watch_progress
from e2e3d_provider.devstack import stack
from e2e3d_provider.devstack.console import Console, human_bytes, state_dir
from e2e3d_provider.example_dags import DAGS_DIR

#: the 3D viewer's page on Airflow's api-server: the plugin's mount point (``plugin.URL_PREFIX``, which this
#: developer layer may not import) and the page
VIEWER_PATH = "/e2e3d/viewer"
SAMPLE_DATASET = "terrain"
SAMPLE_DIR = Path(__file__).parent / "sample_data" / SAMPLE_DATASET
DAG_FILE = "e2e3d_reconstruction.py"


def dags_dir() -> Path:
    """The example DAGs' folder, shipped in the package (in a checkout, ``dags/`` links to it)."""
    return DAGS_DIR


CONSOLE: Console | None = None


def _say(message: str, started: float) -> None:
    line = f"[{time.monotonic() - started:5.1f}s] {message}"
    if CONSOLE is not None:
        CONSOLE.say(line)
    else:
        print(line, flush=True)


def _out(line: str = "") -> None:
    if CONSOLE is not None:
        CONSOLE.say(line)
    else:
        print(line, flush=True)


def task_line(metadata: Any, dag_id: str, run_id: str, task_id: str, state: str, seconds: float) -> str:
    """One task as the demo prints it: state, seconds, and the bytes it moved (from PostgreSQL)."""
    files, nbytes, busy = metadata.task_transfers(f"{dag_id}/{run_id}/{task_id}")
    moved = f"{files:>3} files {human_bytes(nbytes):>9}  {nbytes / 1e6 / busy:6.1f} MB/s" if nbytes and busy else ""
    return f"  {task_id:<18} {state:<8} {seconds:6.1f}s  {moved}".rstrip()


def _load_dag(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("e2e3d_demo_dag", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.e2e3d_reconstruction()


def _listen_for_tasks(metadata: Any) -> Any:
    """Register an Airflow listener that prints a line for each task of the demo's run as it ends."""
    from airflow.listeners import hookimpl
    from airflow.sdk.listener import get_listener_manager

    class TaskLines:
        def __init__(self) -> None:
            self.began: dict[str, float] = {}

        def _line(self, task_instance: Any, state: str) -> None:
            began = self.began.pop(task_instance.task_id, time.monotonic())
            try:
                line = task_line(
                    metadata,
                    task_instance.dag_id,
                    task_instance.run_id,
                    task_instance.task_id,
                    state,
                    time.monotonic() - began,
                )
            except Exception:  # the line is a courtesy: never fail the run for it
                line = f"  {task_instance.task_id:<18} {state}"
            _out(line)

        @hookimpl
        def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
            self.began[task_instance.task_id] = time.monotonic()

        @hookimpl
        def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
            self._line(task_instance, "success")

        @hookimpl
        def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any) -> None:
            self._line(task_instance, "failed")

        @hookimpl
        def on_task_instance_skipped(self, previous_state: Any, task_instance: Any) -> None:
            self._line(task_instance, "skipped")

    listener = TaskLines()
    get_listener_manager().add_listener(listener)
    return listener


def _report(storage: Any, metadata: Any, job_id: str, state: str) -> int:
    """Print the job as PostgreSQL and the bucket hold it, and fetch its results by pre-signed URL."""
    job = metadata.get_job(job_id)
    if job is None or state != "success":
        _out(f"the demo job did not succeed: {json.dumps(job, default=str)}")
        return 1
    stats = job["statistics"] or {}
    variants = sum(
        kind.get("variants", 0) for kind in (stats.get("right_size") or {}).values() if isinstance(kind, dict)
    )
    _out(f"\njob {job['job_id']} (stamp {job['stamp']}, dataset {job['dataset']}): {job['status']}")
    _out(
        f"  {job['files']} files, {human_bytes(job['bytes'])} in {job['result_bucket']}/{job['result_prefix']} "
        f"(manifest {job['manifest_key']}); archived to {job['archive_key']}"
    )
    _out(
        f"  {stats.get('images', '?')} images -> {stats.get('faces', '?')} faces, {stats.get('points', '?')} points; "
        f"{variants} right-sized variants"
    )
    _out("results, each fetched once by its pre-signed URL (valid 24 h):")
    manifest = {
        entry["path"]: entry for entry in json.loads(storage.get_bytes(BUCKET_OUTPUT, manifest_key(job_id)))["files"]
    }
    for label, rel in (("mesh", MESH_RELPATH), ("texture", TEXTURE_RELPATH), ("point cloud", POINTCLOUD_RELPATH)):
        url = storage.presigned_get(BUCKET_OUTPUT, output_key(job_id, rel))
        with urllib.request.urlopen(url, timeout=30) as response:
            body = response.read()
        ok = hashlib.sha256(body).hexdigest() == manifest[rel]["sha256"]
        _out(
            f"  {label:<12} {human_bytes(len(body)):>9}  sha256 "
            f"{'matches the manifest' if ok else 'DOES NOT MATCH the manifest'}\n    {url}"
        )
        if not ok:
            return 1
    return 0


def viewer_lines(job_id: str, keep_stack: bool, stack_dir: Path | None) -> list[str]:
    """The demo's last lines: where to look at the job in 3D. No api-server outlives the demo (``dag.test``
    runs none; ``--workers`` stops its Airflow at the end), so they say how to start one on the kept stack,
    ``e2e3d airflow`` (it prints its URL and login), and the viewer's path on it for this job."""
    page = f"{VIEWER_PATH}?job={quote(job_id, safe='')}"
    if not keep_stack:
        return [
            f"3D view: <Airflow's URL>{page} on a stack that keeps the job: `e2e3d demo --keep-stack`,",
            "  then `e2e3d airflow` (it prints its URL and login), and open the viewer URL the demo then prints",
        ]
    start = "e2e3d airflow" + (f" --dir {shlex.quote(str(stack_dir))}" if stack_dir else "")
    return [
        f"3D view: `{start}` starts Airflow on this stack and prints its URL and login; then open",
        f"  <that URL>{page}",
    ]


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
        from e2e3d_provider.hooks.metadata import MetadataHook

        metadata = MetadataHook()
        for ti in deployment.task_instances("e2e3d_reconstruction", run_id):
            line = task_line(
                metadata, "e2e3d_reconstruction", run_id, ti["task_id"], ti["state"] or "", ti.get("duration") or 0.0
            )
            _out(f"{line:<70} on {ti.get('hostname') or '-'}")
    _say(f"DAG run {state}", started)
    return state


def run_demo(keep_stack: bool = False, stack_dir: Path | None = None, workers: int = 1, verbose: bool = False) -> int:
    """The demo, quiet: Airflow's output goes to ``<state dir>/demo.log`` (printed), its temporary
    directories go at exit unless ``keep_stack``."""
    global CONSOLE
    log_path = state_dir() / "demo.log"
    work = Path(tempfile.mkdtemp(prefix="e2e3d-demo-"))
    closing: list[str] = []
    try:
        with Console(log_path, quiet=not verbose) as console, watch_progress(console.progress):
            CONSOLE = console
            console.say(f"e2e3d demo: Airflow's logs go to {log_path}" if not verbose else "e2e3d demo")
            code = _run_demo(work, keep_stack, stack_dir, workers, closing)
    finally:
        CONSOLE = None
        if keep_stack:
            print(f"kept: the demo's Airflow home and data in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if code != 0:
        print(f"e2e3d demo failed: see {log_path}", file=sys.stderr)
    for line in closing:
        print(line, flush=True)
    return code


def _run_demo(work: Path, keep_stack: bool, stack_dir: Path | None, workers: int, closing: list[str]) -> int:
    """The demo's steps; on success ``closing`` gets its last lines (where to view the job in 3D)."""
    started = time.monotonic()
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
            print(migrated.stderr[-3000:], file=sys.stderr)  # into the log file
            _out("airflow db migrate failed: see the log")
            return 1

        from e2e3d_provider.hooks.metadata import MetadataHook
        from e2e3d_provider.hooks.storage import StorageHook
        from e2e3d_provider.lifecycle.inputs.ingest import ingest

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
            _say(f"running DAG e2e3d_reconstruction for job {job_id} (dag.test), one line per task:", started)
            dag = _load_dag(dags_dir() / DAG_FILE)
            _listen_for_tasks(metadata)
            dag_run = dag.test(run_conf={"dataset": SAMPLE_DATASET, "job_id": job_id})
            _say(f"DAG run {dag_run.state}", started)
            state = str(dag_run.state)
        if _report(storage, metadata, job_id, state) != 0:
            return 1
        _say("done", started)
        if not keep_stack:
            _out("the stack stops now, and these URLs with it: rerun with --keep-stack to keep them working")
        else:
            _out(
                f'the stack keeps running: eval "$(e2e3d stack env{" --dir " + str(base) if stack_dir else ""})" '
                "to use it, `e2e3d stack down` to stop it"
            )
        closing.extend(viewer_lines(job_id, keep_stack, base if stack_dir else None))
        return 0
    finally:
        if not keep_stack:
            stack.stop_stack(base)
