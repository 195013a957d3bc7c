"""Two runs of one job never interleave: starting, publishing and archiving hold the job's PostgreSQL
advisory lock, so they wait for each other (or fail clearly) on any hosts, against the real stack."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from e2e3d_provider.exceptions import RunConflictError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.locks import job_lock_name
from e2e3d_provider.lifecycle.results.record import begin_run
from e2e3d_provider.operators.upload_results import UploadResultsOperator
from tests.helpers import write_files

STAMP = "20261202T090000Z"


def publish(job_id: str, run_dir: Path, lock_wait: float) -> dict:
    operator = UploadResultsOperator(
        task_id="upload_results",
        job_id=job_id,
        stamp=STAMP,
        run_dir=str(run_dir),
        lock_wait=lock_wait,
        metadata_conn_id=MetadataHook.default_conn_name,  # the lock lives in the metadata database
    )
    return operator.execute({"outlet_events": defaultdict(SimpleNamespace)})


def test_a_publish_fails_clearly_while_another_holds_the_job_and_leaves_nothing(
    storage: StorageHook, metadata: MetadataHook, tmp_path: Path, unique_id: str
) -> None:
    write_files(tmp_path, {"mesh/m.obj": b"v 0 0 0\n"})
    began = time.monotonic()
    held = rf"job {unique_id} \(its output prefix\) is held by another task"
    with metadata.advisory_lock(job_lock_name(unique_id)), pytest.raises(RunConflictError, match=held):
        publish(unique_id, tmp_path, lock_wait=0.5)  # while another run's publish (say on another host) holds it
    assert 0.5 <= time.monotonic() - began < 10
    assert storage.list_keys("output", f"{unique_id}/") == []  # it touched nothing, not even the old SUCCESS


def test_a_publish_waits_for_the_other_and_then_completes(
    storage: StorageHook, metadata: MetadataHook, tmp_path: Path, unique_id: str
) -> None:
    write_files(tmp_path, {"mesh/m.obj": b"v 0 0 0\n"})
    finished: list[float] = []
    with metadata.advisory_lock(job_lock_name(unique_id)):
        worker = threading.Thread(
            target=lambda: finished.append((publish(unique_id, tmp_path, 60), time.monotonic())[1])
        )
        worker.start()
        time.sleep(1.5)
        assert not finished and not storage.exists("output", f"{unique_id}/SUCCESS")  # waiting, not publishing
        released = time.monotonic()
    worker.join(60)
    assert finished and finished[0] >= released
    assert storage.exists("output", f"{unique_id}/SUCCESS")


def test_two_runs_starting_at_once_never_both_start(
    metadata: MetadataHook, unique_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = MetadataHook.job_runs

    def slow_read(self, job_id, status=None):  # widen the window between the check and the record
        found = reads(self, job_id, status)
        time.sleep(0.5)
        return found

    monkeypatch.setattr(MetadataHook, "job_runs", slow_read)
    barrier, outcomes = threading.Barrier(2), []

    def start(dag_run: str, stamp: str) -> None:
        barrier.wait()
        try:
            begin_run(MetadataHook(), unique_id, stamp, "ds", dag_run, "e2e3d_reconstruction")
            outcomes.append("started")
        except RunConflictError as err:
            outcomes.append(str(err))

    threads = [
        threading.Thread(target=start, args=("manual__a", "20261202T090001Z")),
        threading.Thread(target=start, args=("manual__b", "20261202T090002Z")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(o == "started" for o in outcomes) == [False, True], outcomes
    assert "has a run in progress" in next(o for o in outcomes if o != "started")
    assert len(metadata.job_runs(unique_id, "running")) == 1


def test_two_stagings_of_one_dataset_on_one_worker_never_remove_each_others_files(
    storage: StorageHook, tmp_path: Path, unique_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import e2e3d_provider.core.transfer as transfer
    from e2e3d_provider.lifecycle.worker.stage_in import stage_in

    dataset = f"ds-{unique_id}"
    storage.put_bytes("input", f"{dataset}/a.jpg", b"a" * 100)
    listed = transfer.iter_local_files
    b_listed, b_go = threading.Event(), threading.Event()

    def paused(local_dir):  # staging B has listed the bucket and fetched; it removes extras only on b_go
        if threading.current_thread().name == "B":
            b_listed.set()
            b_go.wait(30)
        return listed(local_dir)

    monkeypatch.setattr(transfer, "iter_local_files", paused)
    results: dict[str, object] = {}

    def staging(name: str, job: str) -> None:
        results[name] = stage_in(storage, tmp_path, dataset, job, STAMP)

    b = threading.Thread(target=staging, args=("B", f"{unique_id}-b"), name="B")
    b.start()
    assert b_listed.wait(30)
    storage.put_bytes("input", f"{dataset}/new.jpg", b"n" * 100)  # an image arrives between the two listings
    a = threading.Thread(target=staging, args=("A", f"{unique_id}-a"), name="A")
    a.start()
    a.join(2)  # with the lock, A waits for B here
    b_go.set()
    b.join(30)
    a.join(30)
    staged = tmp_path / "input" / dataset
    assert sorted(p.name for p in staged.iterdir()) == ["a.jpg", "new.jpg"]  # A's fresh image is still there
    assert results["A"].transfers[0].total_files == 2
