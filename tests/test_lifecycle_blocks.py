"""Every operator and sensor in real task runs (dag.test) against the real stack, XComs checked."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from e2e3d_provider.core.layout import RunLayout
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from tests.dags.e2e3d_test_dags import blocks_dag, deferrable_dag, soft_fail_dag
from tests.helpers import task_states, write_files, xcom


def seed_dataset(storage: StorageHook, dataset: str, count: int = 4) -> dict[str, bytes]:
    files = {f"images/view_{i}.jpg": os.urandom(3000 + i) for i in range(count)}
    for rel, data in files.items():
        storage.put_bytes("input", f"{dataset}/{rel}", data)
    return files


def test_lifecycle_blocks_run_end_to_end(
    run_dag, storage: StorageHook, metadata: MetadataHook, unique_id: str, tmp_path: Path
) -> None:
    dataset = f"ds-{unique_id}"
    files = seed_dataset(storage, dataset)
    storage.put_bytes("models", f"m-{unique_id}/weights.bin", b"weights")
    conf = {"dataset": dataset, "job_id": unique_id, "data_root": str(tmp_path), "models_prefix": f"m-{unique_id}"}
    dr = run_dag(blocks_dag, conf)
    assert set(task_states(dr).values()) == {"success"}, task_states(dr)

    assert xcom(dr, "input_present") == {"prefix": f"{dataset}/", "count": 4, "bytes": sum(map(len, files.values()))}
    staged = xcom(dr, "stage_in")
    assert set(staged) >= {
        "dataset",
        "job_id",
        "stamp",
        "host",
        "input_dir",
        "temp_dir",
        "output_dir",
        "files",
        "bytes",
    }
    run = RunLayout(tmp_path, unique_id, staged["stamp"])
    assert staged["host"] == socket.gethostname() and staged["files"] == 4
    assert staged["output_dir"] == str(run.run_dir) and staged["temp_dir"] == str(run.temp_dir)
    assert (tmp_path / "models" / f"m-{unique_id}" / "weights.bin").read_bytes() == b"weights"
    for rel, data in files.items():
        assert (tmp_path / "input" / dataset / rel).read_bytes() == data

    upload = xcom(dr, "upload_results")
    assert upload == {
        "job_id": unique_id,
        "stamp": staged["stamp"],
        "bucket": "output",
        "prefix": f"{unique_id}/",
        "files": 5,
        "bytes": upload["bytes"],
        "manifest_key": f"{unique_id}/metadata.json",
        "success_key": f"{unique_id}/SUCCESS",
        "uploaded_files": 5,
        "uploaded_bytes": upload["bytes"],
        "seconds": upload["seconds"],
    }
    manifest = json.loads(storage.get_bytes("output", f"{unique_id}/metadata.json"))
    assert manifest["statistics"]["images"] == 4
    for entry in manifest["files"]:
        data = (run.run_dir / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert storage.stat("output", f"{unique_id}/{entry['path']}").sha256 == entry["sha256"]
    assert run.success_path.exists() and storage.exists("output", f"{unique_id}/SUCCESS")

    assert xcom(dr, "record_succeeded") == {"job_id": unique_id, "status": "succeeded"}
    assert xcom(dr, "results_ready") == {
        "bucket": "output",
        "marker_key": f"{unique_id}/SUCCESS",
        "manifest_key": f"{unique_id}/metadata.json",
    }
    archived = xcom(dr, "archive")
    assert archived["archive_key"] == f"{unique_id}/{unique_id}_{staged['stamp']}/"
    assert sorted(storage.list_keys("archive", archived["archive_key"])) == sorted(
        [f"{archived['archive_key']}{e['path']}" for e in manifest["files"]]
        + [f"{archived['archive_key']}metadata.json", f"{archived['archive_key']}SUCCESS"]
    )

    job = metadata.get_job(unique_id, staged["stamp"])
    assert job["status"] == "archived" and job["files"] == 5
    assert job["archive_key"] == f"archive/{archived['archive_key']}"
    assert job["statistics"]["upload_seconds"] == upload["seconds"]
    assert len(metadata.job_files(unique_id, staged["stamp"])) == 5
    assert xcom(dr, "cleanup") == {"removed": [str(run.temp_dir)], "missing": []}
    assert not run.temp_dir.exists() and run.run_dir.exists()

    # A second run of the same job: stage-in moves 0 bytes, unchanged results send nothing new.
    dr2 = run_dag(blocks_dag, conf)
    assert str(dr2.state) == "success", task_states(dr2)
    assert xcom(dr2, "stage_in")["transferred_bytes"] == 0
    with metadata.transaction() as cur:
        cur.execute("SELECT count(*) FROM e2e3d.transfers WHERE job_id = %s AND direction = 'download'", (unique_id,))
        assert cur.fetchone()[0] >= 2


def test_deferrable_sensors_wait_in_the_trigger(run_dag, storage: StorageHook, unique_id: str) -> None:
    dataset = f"ds-{unique_id}"
    seed_dataset(storage, dataset, count=2)

    def publish_later() -> None:
        time.sleep(4)
        storage.put_bytes("output", f"{unique_id}/SUCCESS", b"{}")

    writer = threading.Thread(target=publish_later)
    writer.start()
    started = time.monotonic()
    dr = run_dag(deferrable_dag, {"dataset": dataset, "job_id": unique_id})
    writer.join()
    assert str(dr.state) == "success", task_states(dr)
    assert time.monotonic() - started >= 4  # it really waited for the marker
    assert xcom(dr, "input_present")["count"] == 2
    assert xcom(dr, "results_ready") == {
        "bucket": "output",
        "marker_key": f"{unique_id}/SUCCESS",
        "manifest_key": f"{unique_id}/metadata.json",
    }


def test_sensor_timeout_with_soft_fail_skips(run_dag, unique_id: str) -> None:
    dr = run_dag(soft_fail_dag, {"job_id": unique_id})
    assert task_states(dr) == {"never_ready": "skipped"}


def test_stage_in_of_a_missing_dataset_fails_clearly(storage: StorageHook, tmp_path: Path, unique_id: str) -> None:
    from e2e3d_provider.operators.stage_in import StageInOperator

    op = StageInOperator(
        task_id="s", dataset=f"absent-{unique_id}", job_id=unique_id, data_root=str(tmp_path), stamp="20260101T000000Z"
    )
    from airflow.sdk.exceptions import AirflowFailException

    from e2e3d_provider.exceptions import MissingInputError

    with pytest.raises(AirflowFailException, match=r"has no images in bucket 'input'") as failed:
        op.execute({})  # missing input: the task fails at once, no retry
    assert isinstance(failed.value.__cause__, MissingInputError)
    assert not (tmp_path / "output").exists()


def test_stage_in_with_a_corrupted_object_fails_and_leaves_no_partial_file(
    storage: StorageHook, tmp_path: Path, unique_id: str
) -> None:
    import io

    from e2e3d_provider.exceptions import ChecksumMismatchError
    from e2e3d_provider.operators.stage_in import StageInOperator

    dataset = f"ds-{unique_id}"
    files = seed_dataset(storage, dataset)
    good = files["images/view_1.jpg"]
    bad = bytes([good[0] ^ 0xFF]) + good[1:]  # not b"X" + ...: a random first byte is "X" once in 256 runs
    storage.client.put_object(
        "input",
        f"{dataset}/images/view_1.jpg",
        io.BytesIO(bad),
        len(bad),
        metadata={"sha256": hashlib.sha256(good).hexdigest()},
    )
    op = StageInOperator(
        task_id="s", dataset=dataset, job_id=unique_id, data_root=str(tmp_path), stamp="20260101T000000Z"
    )
    with pytest.raises(ChecksumMismatchError, match=r"view_1\.jpg"):
        op.execute({})
    assert not list(tmp_path.rglob("view_1.jpg"))  # neither in the staged dataset nor in the host's cache
    assert not [p for p in tmp_path.rglob("*") if "partial" in p.name]


def test_upload_results_names_both_hosts_when_the_run_dir_is_elsewhere(tmp_path: Path, connections: dict) -> None:
    """It asks the object store for a hand-off first (none here), so it needs the storage connection."""
    from e2e3d_provider.operators.upload_results import UploadResultsOperator

    op = UploadResultsOperator(
        task_id="u", job_id="job1", stamp="20260101T000000Z", run_dir=str(tmp_path / "not-here"), origin_host="worker-7"
    )
    with pytest.raises(FileNotFoundError) as caught:
        op.execute({})
    message = str(caught.value)
    assert "worker-7" in message and socket.gethostname() in message
    assert "shared PVC" in message and "per-worker queue" in message


def test_cleanup_refuses_paths_outside_the_data_root(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from e2e3d_provider.core.layout import InvalidNameError
    from e2e3d_provider.operators.cleanup import CleanupOperator

    root = tmp_path / "root"
    outside = tmp_path_factory.mktemp("outside")
    write_files(outside, {"precious.txt": b"keep me"})
    (root / "temp").mkdir(parents=True)
    (root / "temp" / "link").symlink_to(outside, target_is_directory=True)
    for bad in (
        str(root / "temp" / ".." / ".." / "x"),
        "../x",
        str(outside),
        str(root / "temp" / "link"),
        str(root),
        "/",
    ):
        op = CleanupOperator(task_id="c", temp_dir=bad, data_root=str(root))
        with pytest.raises(InvalidNameError):
            op.execute({})
    assert (outside / "precious.txt").read_bytes() == b"keep me"


def test_cleanup_is_idempotent_and_removes_only_inside_the_root(tmp_path: Path) -> None:
    from e2e3d_provider.operators.cleanup import CleanupOperator

    run = RunLayout(tmp_path, "job1", "20260101T000000Z")
    write_files(run.temp_dir, {"a/b.tmp": b"x"})
    write_files(run.run_dir, {"mesh/m.obj": b"v"})
    op = CleanupOperator(
        task_id="c", job_id="job1", stamp="20260101T000000Z", remove_run_dir=True, data_root=str(tmp_path)
    )
    assert op.trigger_rule == "all_done"
    assert op.execute({}) == {"removed": [str(run.temp_dir), str(run.run_dir)], "missing": []}
    assert op.execute({}) == {"removed": [], "missing": [str(run.temp_dir), str(run.run_dir)]}
    assert CleanupOperator(task_id="c2", temp_dir=None, data_root=str(tmp_path)).execute({}) == {
        "removed": [],
        "missing": [],
    }


def test_stage_in_of_a_missing_models_prefix_fails_clearly(
    storage: StorageHook, tmp_path: Path, unique_id: str
) -> None:
    from e2e3d_provider.lifecycle.worker.stage_in import stage_in

    dataset = f"ds-{unique_id}"
    seed_dataset(storage, dataset)
    with pytest.raises(FileNotFoundError, match=r"models prefix 'nothing-here/' has no objects in bucket 'models'"):
        stage_in(storage, tmp_path, dataset, unique_id, "20260101T000000Z", models_prefix="nothing-here")


def test_two_dag_runs_never_share_a_run_and_a_finished_run_is_not_redone(
    metadata: MetadataHook, unique_id: str
) -> None:
    from e2e3d_provider.exceptions import RunConflictError, RunFinishedError
    from e2e3d_provider.lifecycle.results.record import begin_run

    stamp = "20260101T000000Z"
    assert begin_run(metadata, unique_id, stamp, "ds", "manual__a")["status"] == "running"
    with pytest.raises(RunConflictError, match="running in DAG run 'manual__a'"):
        begin_run(metadata, unique_id, stamp, "ds", "manual__b")  # same second, another DAG run
    assert begin_run(metadata, unique_id, stamp, "ds", "manual__a")["status"] == "running"  # its own retry
    metadata.record_job(unique_id, stamp, "ds", "succeeded")
    with pytest.raises(RunFinishedError, match="already succeeded; it is not redone"):
        begin_run(metadata, unique_id, stamp, "ds", "manual__a")  # a Clear of the finished run
    with pytest.raises(RunConflictError, match="already completed by DAG run 'manual__a'"):
        begin_run(metadata, unique_id, stamp, "ds", "manual__c")  # a run queued behind it, same second
    assert metadata.get_job(unique_id, stamp)["status"] == "succeeded"


def test_clear_of_a_finished_run_skips_the_job_and_says_why(
    airflow_db,
    connections: dict,
    metadata: MetadataHook,
    tmp_path: Path,
    unique_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What Airflow's Clear does to a succeeded run, replayed: the same run (same run_after, so the
    same stamp) starts again over a job row that is already succeeded."""
    from datetime import UTC, datetime

    from tests.helpers import load_repo_dag, task_states

    monkeypatch.setenv("E2E3D_DATA_ROOT", str(tmp_path))
    when, stamp = datetime(2026, 1, 2, tzinfo=UTC), "20260102T000000Z"
    metadata.record_job(unique_id, stamp, "terrain", "running")
    metadata.record_job(unique_id, stamp, "terrain", "succeeded")
    dag = load_repo_dag("e2e3d_reconstruction.py", "e2e3d_reconstruction")
    dr = dag.test(run_conf={"job_id": unique_id}, run_after=when, logical_date=when)
    states = task_states(dr)
    assert str(dr.state) == "success", states
    assert states["prepare"] == "skipped" and states["upload_results"] == "skipped", states
    assert states["cleanup"] == "skipped" and states["mark_failed"] == "skipped", states  # nothing to clean
    assert metadata.get_job(unique_id, stamp)["status"] == "succeeded"


def test_a_job_whose_dag_run_ended_from_outside_is_reconciled_failed(metadata: MetadataHook, unique_id: str) -> None:
    """The DAG run's state is Airflow's to answer; here a table stands in for it (the real path runs in
    tests/test_deployment.py against a real scheduler)."""
    from e2e3d_provider.lifecycle.maintenance.reconcile import reconcile_running_jobs
    from e2e3d_provider.lifecycle.results.record import begin_run

    runs = {"run-failed": "failed", "run-live": "running"}
    stamp = "20260103T000000Z"
    for job, run_id in ((f"{unique_id}-a", "run-failed"), (f"{unique_id}-b", "run-live"), (f"{unique_id}-c", "gone")):
        begin_run(metadata, job, stamp, "ds", run_id, "e2e3d_reconstruction")
    result = reconcile_running_jobs(metadata, lambda dag_id, run_id: runs.get(run_id))
    assert f"{unique_id}-a" in result["jobs"] and f"{unique_id}-c" in result["jobs"]
    failed = metadata.get_job(f"{unique_id}-a", stamp)
    assert failed["status"] == "failed" and "run-failed of e2e3d_reconstruction ended failed" in failed["error"]
    assert "no longer exists" in metadata.get_job(f"{unique_id}-c", stamp)["error"]
    assert metadata.get_job(f"{unique_id}-b", stamp)["status"] == "running"  # its own tasks will finish it


def test_two_runs_of_one_job_never_interleave_at_different_stamps(metadata: MetadataHook, unique_id: str) -> None:
    from e2e3d_provider.exceptions import RunConflictError
    from e2e3d_provider.lifecycle.results.record import begin_run

    begin_run(metadata, unique_id, "20260104T000000Z", "ds", "run-1", "e2e3d_reconstruction")
    alive = {"run-1": True}
    with pytest.raises(RunConflictError, match=r"has a run in progress \(stamp 20260104T000000Z, DAG run 'run-1'\)"):
        begin_run(
            metadata,
            unique_id,
            "20260104T000005Z",
            "ds",
            "run-2",
            "e2e3d_reconstruction",
            run_is_live=lambda dag_id, run_id: alive[run_id],
        )
    with pytest.raises(RunConflictError):  # without an answer on liveness: the safe side
        begin_run(metadata, unique_id, "20260104T000005Z", "ds", "run-2", "e2e3d_reconstruction")
    alive["run-1"] = False  # its DAG run ended from outside: the stale row does not block the job
    row = begin_run(
        metadata,
        unique_id,
        "20260104T000005Z",
        "ds",
        "run-2",
        "e2e3d_reconstruction",
        run_is_live=lambda dag_id, run_id: alive[run_id],
    )
    assert row["status"] == "running" and row["stamp"] == "20260104T000005Z"


def test_cleanup_removes_only_below_temp_or_a_run_dir_and_never_through_a_link(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from e2e3d_provider.exceptions import InvalidNameError
    from e2e3d_provider.lifecycle.worker.scratch import clean_run

    root = tmp_path / "root"
    write_files(root, {"output/jobA/jobA_20260101T000000Z/mesh/m.obj": b"v", "temp/run1/x.tmp": b"x"})
    outside = tmp_path_factory.mktemp("outside")
    (root / "temp" / "via_out").symlink_to(outside, target_is_directory=True)
    (outside / "back").symlink_to(root / "temp" / "run1", target_is_directory=True)  # out and back in
    for temp_dir in (
        "output",
        str(root / "output"),
        str(root / "temp"),
        "temp/via_out/back",
        str(root / "temp" / "via_out" / "back"),
    ):
        with pytest.raises(InvalidNameError):
            clean_run(root, temp_dir=temp_dir)
    for run_dir in (str(root / "output"), str(root / "output" / "jobA")):  # all of output, or a whole job
        with pytest.raises(InvalidNameError):
            clean_run(root, run_dir=run_dir, remove_run_dir=True)
    assert (outside / "back").is_symlink() and (root / "output" / "jobA").is_dir() and (root / "temp" / "run1").is_dir()
    assert clean_run(root, temp_dir="temp/run1")["removed"] == [str(root / "temp" / "run1")]


def test_a_stray_entry_in_temp_is_skipped_and_reported_not_fatal(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from e2e3d_provider.lifecycle.worker.scratch import clean_temp

    root = tmp_path / "root"
    write_files(root, {"temp/old_run/x.tmp": b"x"})
    outside = tmp_path_factory.mktemp("outside")
    write_files(outside, {"precious.txt": b"keep me"})
    (root / "temp" / "a_stray_link").symlink_to(outside, target_is_directory=True)
    result = clean_temp(root, max_age_hours=0, now=time.time() + 3600)
    assert result["removed"] == 1 and result["names"] == ["old_run"] and result["skipped"] == ["a_stray_link"]
    assert (outside / "precious.txt").read_bytes() == b"keep me"
