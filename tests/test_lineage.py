"""OpenLineage: the lifecycle's operators report their object-storage inputs and outputs (``s3://<bucket>``
namespaces, as the amazon provider names them), checked through the OpenLineage provider's file transport
on a real run of the lifecycle DAG. The run is a child process, so the provider's listener registers from
a clean start with the transport set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from e2e3d_provider.core.layout import archive_prefix, input_prefix, work_prefix
from e2e3d_provider.devstack.demo import SAMPLE_DIR as SAMPLE
from e2e3d_provider.example_dags import DAGS_DIR
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.inputs.ingest import ingest

RUN = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("repo_dags_e2e3d_reconstruction", sys.argv[3])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
dag = module.e2e3d_reconstruction()
run = dag.test(run_conf={"dataset": sys.argv[1], "job_id": sys.argv[2], "right_size": False})
# a file, not stdout: the OpenLineage thread's log lines share stdout and can split a print in two
open(sys.argv[4], "w").write(str(run.state))
"""


def test_operators_report_their_s3_inputs_and_outputs_to_openlineage(
    airflow_db, storage: StorageHook, tmp_path: Path, unique_id: str
) -> None:
    dataset = f"ds-{unique_id}"
    ingest(storage, SAMPLE, dataset)
    events_file = tmp_path / "lineage.jsonl"
    env = dict(
        os.environ,
        AIRFLOW__OPENLINEAGE__TRANSPORT=json.dumps({"type": "file", "log_file_path": str(events_file), "append": True}),
        AIRFLOW__OPENLINEAGE__NAMESPACE="e2e3d-test",
        AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD="True",
        E2E3D_DATA_ROOT=str(tmp_path / "data"),
    )
    dag_file = str(DAGS_DIR / "e2e3d_reconstruction.py")
    state_file = tmp_path / "state"
    command = [sys.executable, "-P", "-c", RUN, dataset, unique_id, dag_file, str(state_file)]
    # not from the repository's root: its *.egg-info would make the e2e3d plugin's entry point appear twice,
    # and Airflow's plugin loader stops at a duplicate name, dropping every plugin after it (OpenLineage's too)
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    state = state_file.read_text() if state_file.exists() else None
    assert state == "success", (state, done.stdout[-3000:] + done.stderr[-3000:])
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    completed = {
        e["job"]["name"].rsplit(".", 1)[-1]: e
        for e in events
        if e.get("eventType") == "COMPLETE" and e["job"]["name"].startswith("e2e3d_reconstruction.")
    }

    def io(task: str) -> tuple[set, set]:
        event = completed[task]
        return (
            {(d["namespace"], d["name"]) for d in event.get("inputs", [])},
            {(d["namespace"], d["name"]) for d in event.get("outputs", [])},
        )

    assert io("stage_in") == ({("s3://input", input_prefix(dataset).rstrip("/"))}, set())
    (work,) = io("reconstruct")[1]
    assert work[0] == "s3://output" and work[1].startswith(f".work/{unique_id}/")
    assert io("reconstruct")[0] == {("s3://input", input_prefix(dataset).rstrip("/"))}
    assert io("upload_results") == ({work}, {("s3://output", unique_id)})
    stamp = work[1].rsplit("_", 1)[-1]
    assert work[1] == work_prefix(unique_id, stamp).rstrip("/")
    assert io("archive") == (
        {("s3://output", unique_id)},
        {("s3://archive", archive_prefix(unique_id, stamp).rstrip("/"))},
    )
