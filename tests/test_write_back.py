"""The write-back cache and the producer workspace, against the real S3 server: files go to object storage
while the producer runs, the task ends only when all are stored and verified, a failed producer leaves
nothing readable and its rerun sends only what is missing."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from e2e3d_provider.core.layout import HANDOFF_NAME, success_key, work_prefix
from e2e3d_provider.exceptions import UnsafePathError
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.inputs.ingest import ingest
from e2e3d_provider.lifecycle.results.handoff import read_handoff
from e2e3d_provider.lifecycle.worker.rebuild import materialize
from e2e3d_provider.lifecycle.worker.stage_in import stage_in
from e2e3d_provider.lifecycle.worker.workspace import Workspace, run_in_workspace
from tests.helpers import write_files

STAMP = "20260301T000000Z"
from e2e3d_provider.devstack.demo import SAMPLE_DIR as SAMPLE  # noqa: E402  (the installed package's)


@pytest.fixture
def staged(storage: StorageHook, tmp_path: Path, unique_id: str) -> dict[str, Any]:
    ingest(storage, SAMPLE, unique_id)
    return stage_in(storage, tmp_path / "root", unique_id, unique_id, STAMP).to_xcom()


def wait_for_object(storage: StorageHook, key: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if storage.exists("output", key):
            return True
        time.sleep(0.1)
    return False


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_files_upload_while_the_producer_runs_and_the_task_ends_with_a_verified_handoff(
    storage: StorageHook, tmp_path: Path, staged: dict[str, Any], unique_id: str
) -> None:
    prefix = work_prefix(unique_id, STAMP)
    mesh, texture = os.urandom(300_000), os.urandom(200_000)
    seen_while_running: list[bool] = []

    def produce(ws: Workspace) -> dict[str, int]:
        assert sorted(p.name for p in ws.input_dir.iterdir()) == sorted(p.name for p in SAMPLE.iterdir())
        write_files(ws.run_dir, {"mesh/reconstructed_mesh.obj": mesh})
        # the producer is still running: the mesh must reach the bucket now, not when it returns
        seen_while_running.append(wait_for_object(storage, prefix + "mesh/reconstructed_mesh.obj"))
        assert not storage.exists("output", prefix + HANDOFF_NAME)  # not readable before the end
        write_files(ws.run_dir, {"textures/texture.png": texture})
        return {"faces": 3}

    produced = run_in_workspace(storage, tmp_path / "root", staged, produce, settle=0.2, interval=0.1)
    assert seen_while_running == [True] and produced.value == {"faces": 3}
    assert produced.write_back.early_files >= 1 and produced.write_back.early_bytes >= len(mesh)
    manifest = read_handoff(storage, unique_id, STAMP)
    assert {e.path: e.sha256 for e in manifest.files} == {
        "mesh/reconstructed_mesh.obj": sha(mesh),
        "textures/texture.png": sha(texture),
    }
    assert produced.sent.files == 2 and produced.sent.bytes == len(mesh) + len(texture)
    elsewhere = tmp_path / "other-host" / "run"
    materialize(storage, unique_id, STAMP, elsewhere)
    assert (elsewhere / "mesh/reconstructed_mesh.obj").read_bytes() == mesh
    assert (elsewhere / "textures/texture.png").read_bytes() == texture


def test_a_failed_producer_leaves_nothing_readable_and_its_rerun_sends_only_what_is_missing(
    storage: StorageHook, tmp_path: Path, staged: dict[str, Any], unique_id: str
) -> None:
    prefix = work_prefix(unique_id, STAMP)
    first, second, third = os.urandom(400_000), os.urandom(400_000), os.urandom(50_000)

    def crashes(ws: Workspace) -> None:
        write_files(ws.run_dir, {"mesh/a.obj": first, "pointcloud/p.ply": second})
        assert wait_for_object(storage, prefix + "mesh/a.obj") and wait_for_object(storage, prefix + "pointcloud/p.ply")
        raise RuntimeError("the reconstruction crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        run_in_workspace(storage, tmp_path / "root", staged, crashes, settle=0.2, interval=0.1)
    assert read_handoff(storage, unique_id, STAMP) is None  # no task reads, no publish finds, a partial run
    assert not storage.exists("output", success_key(unique_id))

    def completes(ws: Workspace) -> None:  # the retry: same files (a deterministic producer), and one more
        write_files(ws.run_dir, {"mesh/a.obj": first, "pointcloud/p.ply": second, "textures/t.png": third})

    produced = run_in_workspace(storage, tmp_path / "root", staged, completes, settle=0.2, interval=0.1)
    assert (produced.sent.files, produced.sent.bytes) == (1, len(third))
    assert produced.sent.skipped_files == 2
    assert len(read_handoff(storage, unique_id, STAMP).files) == 3


def test_a_file_rewritten_after_its_early_upload_is_sent_again(
    storage: StorageHook, tmp_path: Path, staged: dict[str, Any], unique_id: str
) -> None:
    prefix = work_prefix(unique_id, STAMP)
    draft, final = os.urandom(100_000), os.urandom(120_000)

    def produce(ws: Workspace) -> None:
        write_files(ws.run_dir, {"logs/run.log": draft})
        assert wait_for_object(storage, prefix + "logs/run.log")
        write_files(ws.run_dir, {"logs/run.log": final})

    produced = run_in_workspace(storage, tmp_path / "root", staged, produce, settle=0.2, interval=0.1)
    (entry,) = read_handoff(storage, unique_id, STAMP).files
    assert entry.sha256 == sha(final)
    assert storage.get_bytes("output", prefix + "logs/run.log") == final
    # the server holds both: the draft sent early, the final version sent again (the bucket is versioned)
    versions = storage.object_versions("output", prefix + "logs/run.log")
    assert sorted(v.size for v in versions) == [len(draft), len(final)]
    # and what moved is counted, however close the rewrite came to the early upload's end; the final
    # version goes at the end (resent) unless the watcher took it first (a producer held up past settle)
    stats = produced.write_back
    assert (produced.sent.files, produced.sent.bytes) == (2, len(draft) + len(final))
    assert (stats.early_files, stats.resent_files) in {(1, 1), (2, 0)}, stats


def test_on_another_host_the_workspace_is_built_from_the_bucket_and_removed_once_handed_on(
    storage: StorageHook, tmp_path: Path, staged: dict[str, Any], unique_id: str
) -> None:
    foreign = {**staged, "host": "some-other-worker"}  # the XCom of a stage-in that ran elsewhere
    other_root = tmp_path / "second-host"
    places: list[Path] = []

    def produce(ws: Workspace) -> None:
        places.extend([ws.input_dir, ws.run_dir])
        assert ws.input_dir.is_relative_to(other_root) and ws.run_dir.is_relative_to(other_root)
        write_files(ws.run_dir, {"mesh/m.obj": b"v 0 0 0\n"})

    produced = run_in_workspace(storage, other_root, foreign, produce, settle=0.2, interval=0.1)
    assert produced.staged_input is not None and produced.staged_input.total_files == 6
    assert not places[1].exists()  # scratch on this host: handed on, then removed
    assert places[0].is_dir()  # the input stays in this host's read-through cache
    assert read_handoff(storage, unique_id, STAMP).files[0].path == "mesh/m.obj"


def test_the_workspace_decorator_is_registered_with_airflow() -> None:
    from airflow.sdk import task

    from e2e3d_provider.decorators.workspace import WorkspaceDecoratedOperator

    @task.e2e3d_workspace
    def reconstruct(workspace: Workspace) -> None: ...

    from airflow.sdk import DAG

    with DAG("decorator_probe", schedule=None):
        op = reconstruct({"dataset": "d"}).operator
    assert isinstance(op, WorkspaceDecoratedOperator) and op.task_id == "reconstruct"


def test_a_staged_output_dir_outside_the_data_root_is_never_handed_on(
    storage: StorageHook, tmp_path: Path, staged: dict[str, Any], unique_id: str
) -> None:
    """Issue 28 (6): the workspace took stage_in's output_dir as it came and handed on every file below it,
    so an XCom naming another folder of this host (a home directory) published that folder's files."""
    home = tmp_path / "home"
    write_files(home, {".ssh/id_ed25519": b"private key"})
    with pytest.raises(UnsafePathError, match="data root"):
        run_in_workspace(storage, tmp_path / "root", {**staged, "output_dir": str(home)}, lambda ws: None)
    assert storage.list_keys("output", work_prefix(unique_id, STAMP)) == []
