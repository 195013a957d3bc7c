"""Tasks of one run on different hosts: each "host" here has its own hostname and its own data root, and
the one before it is deleted, so nothing passes through a shared disk; files go through object storage."""

from __future__ import annotations

import shutil
import socket
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.rightsize_data import make_results
from e2e3d_provider.core.layout import HANDOFF_NAME, RunLayout, work_prefix
from e2e3d_provider.exceptions import LocalPathError, RunMismatchError, UnsafePathError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.results.handoff import hand_off, read_handoff
from e2e3d_provider.lifecycle.results.published import fetch_published, read_published
from e2e3d_provider.lifecycle.worker.rebuild import local_run_dir
from e2e3d_provider.operators.rightsize import RightSizeOperator
from e2e3d_provider.operators.upload_results import UploadResultsOperator
from tests.helpers import write_files

STAMP = "20261202T100000Z"


def on_host(monkeypatch: pytest.MonkeyPatch, name: str, root: Path) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: name)
    monkeypatch.setenv("E2E3D_DATA_ROOT", str(root))


def test_a_run_moves_host_to_host_through_object_storage_and_publishes_from_a_third(
    storage: StorageHook, tmp_path: Path, unique_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    roots = {name: tmp_path / name for name in ("host-a", "host-b", "host-c")}
    # host-a: the reconstruction writes its run directory and hands it on
    on_host(monkeypatch, "host-a", roots["host-a"])
    run_a = RunLayout(roots["host-a"], unique_id, STAMP).run_dir
    make_results(run_a, "tiny")
    write_files(run_a, {"logs/reconstruct.log": b"ok\n", "temp/scratch.bin": b"x" * 10})
    handed, sent = hand_off(storage, run_a, unique_id, STAMP)
    assert handed.prefix == work_prefix(unique_id, STAMP) and sent.files == handed.files == 6
    shutil.rmtree(roots["host-a"])  # host-a's disk is not host-b's

    # host-b: right-sizing rebuilds the run from the hand-off, and hands the variants on
    on_host(monkeypatch, "host-b", roots["host-b"])
    right_size = RightSizeOperator(
        task_id="right_size",
        run_dir=str(run_a),
        origin_host="host-a",
        job_id=unique_id,
        stamp=STAMP,
        settings={"mesh_error_samples": 1000},
        metadata_conn_id=None,
    )
    result = right_size.execute({})
    assert result["variants"] > 10 and result["handoff"]["manifest_key"] == work_prefix(unique_id, STAMP) + HANDOFF_NAME
    assert result["handoff"]["sent_bytes"] < result["handoff"]["bytes"]  # the originals were there already
    run_b = RunLayout(roots["host-b"], unique_id, STAMP).run_dir
    assert not run_b.exists()  # the copy rebuilt for the task is scratch: gone once it was handed on
    again = local_run_dir(storage, unique_id, STAMP, roots["host-b"])  # a second task on host-b
    assert again.run_dir == run_b and again.rebuilt
    assert again.moved is not None and again.moved.files == result["handoff"]["files"]  # whole, from the hand-off
    third = local_run_dir(storage, unique_id, STAMP, roots["host-b"])  # and a third: already here
    assert third.moved is not None and third.moved.bytes == 0
    assert third.moved.skipped_files == result["handoff"]["files"]
    shutil.rmtree(roots["host-b"])

    # host-c: publishing copies server-side from the hand-off: no local files at all
    on_host(monkeypatch, "host-c", roots["host-c"])
    upload = UploadResultsOperator(
        task_id="upload_results",
        job_id=unique_id,
        stamp=STAMP,
        run_dir=str(run_a),
        origin_host="host-a",
        metadata_conn_id=MetadataHook.default_conn_name,
    )
    published = upload.execute({"outlet_events": defaultdict(SimpleNamespace)})
    assert not roots["host-c"].exists()
    manifest = read_published(storage, "output", unique_id).manifest
    roles = {e.path: e.role for e in manifest.files}
    assert roles["mesh/reconstructed_mesh.obj"] == "original" and roles["mesh/lod1/reconstructed_mesh.obj"] == "lod"
    assert "temp/scratch.bin" not in roles and manifest.dropped[0]["prefix"] == "temp/"
    assert published["files"] == len(manifest.files) == result["variants"] + 5
    fetched = fetch_published(storage, unique_id, tmp_path / "reader")  # every byte against the manifest
    assert fetched.files == len(manifest.files)
    assert storage.list_keys("output", work_prefix(unique_id, STAMP)) == []  # the hand-off is gone


def test_a_hand_off_without_its_manifest_is_never_read(
    storage: StorageHook, tmp_path: Path, unique_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_host(monkeypatch, "host-a", tmp_path / "a")
    run_a = RunLayout(tmp_path / "a", unique_id, STAMP).run_dir
    write_files(run_a, {"mesh/m.obj": b"v 0 0 0\n"})
    hand_off(storage, run_a, unique_id, STAMP)
    storage.delete_object("output", work_prefix(unique_id, STAMP) + HANDOFF_NAME)  # a task that died part-way
    on_host(monkeypatch, "host-b", tmp_path / "b")
    with pytest.raises(LocalPathError, match=r"written on host 'host-a'.*was not handed off"):
        local_run_dir(storage, unique_id, STAMP, tmp_path / "b", str(run_a), "host-a")
    assert not (tmp_path / "b").exists()


def test_the_hand_off_wins_over_a_stale_run_directory_on_the_staging_host(
    storage: StorageHook, tmp_path: Path, unique_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stage_in made the (empty) run directory on host-a; the reconstruction ran on host-b and handed its
    results on; right-sizing back on host-a must work on those results, not on the empty directory."""
    on_host(monkeypatch, "host-a", tmp_path / "a")
    staged = RunLayout(tmp_path / "a", unique_id, STAMP).run_dir
    (staged / "mesh").mkdir(parents=True)  # what stage_in leaves: empty folders
    on_host(monkeypatch, "host-b", tmp_path / "b")
    produced = RunLayout(tmp_path / "b", unique_id, STAMP).run_dir
    make_results(produced, "tiny")
    hand_off(storage, produced, unique_id, STAMP)
    on_host(monkeypatch, "host-a", tmp_path / "a")
    local = local_run_dir(storage, unique_id, STAMP, tmp_path / "a", str(staged), "host-a")
    assert local.run_dir == staged and not local.rebuilt  # the staging host keeps its run directory
    assert (staged / "mesh/reconstructed_mesh.obj").is_file() and local.moved is not None and local.moved.files == 4


# --- issue 28 (6): the hand-off trusted the local tree. Each test below failed before its fix.


def handed_off_run(storage: StorageHook, tmp_path: Path, job_id: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run handed off from host-a (its disk then gone); returns host-b's data root, where the next task runs."""
    on_host(monkeypatch, "host-a", tmp_path / "a")
    run_a = RunLayout(tmp_path / "a", job_id, STAMP).run_dir
    write_files(run_a, {"mesh/m.obj": b"v 0 0 0\n", "logs/r.log": b"ok\n"})
    hand_off(storage, run_a, job_id, STAMP)
    shutil.rmtree(tmp_path / "a")
    on_host(monkeypatch, "host-b", tmp_path / "b")
    return tmp_path / "b"


def test_a_run_dir_outside_the_data_root_is_refused_before_anything_is_deleted(
    storage: StorageHook, tmp_path: Path, unique_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RightSizeOperator passed its templated run_dir straight to the rebuild, which made it equal to the
    hand-off: every file there that handoff.json does not name was deleted."""
    root = handed_off_run(storage, tmp_path, unique_id, monkeypatch)
    home = tmp_path / "home"  # any folder the task's user can write: a typo'd template, a hostile param
    write_files(home, {"precious.txt": b"keep me"})
    task = RightSizeOperator(
        task_id="right_size", run_dir=str(home), job_id=unique_id, stamp=STAMP, enabled=False, metadata_conn_id=None
    )
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="data root") as refused:  # no retry: it would be refused again
        task.execute({})
    assert isinstance(refused.value.__cause__, UnsafePathError)
    assert (home / "precious.txt").read_bytes() == b"keep me" and sorted(p.name for p in home.iterdir()) == [
        "precious.txt"
    ]
    # the run's own place, when it is a link out of the root, is refused the same way
    run_b = RunLayout(root, unique_id, STAMP).run_dir
    run_b.parent.mkdir(parents=True)
    run_b.symlink_to(home, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        local_run_dir(storage, unique_id, STAMP, root, str(run_b))
    with pytest.raises(UnsafePathError, match="symbolic link"):
        local_run_dir(storage, unique_id, STAMP, root)
    assert sorted(p.name for p in home.iterdir()) == ["precious.txt"]


def test_a_rebuild_never_writes_through_a_symlinked_folder_in_the_run_dir(
    storage: StorageHook, tmp_path: Path, unique_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """materialize wrote mesh/m.obj through a run-dir folder that was a link, to a file outside the run dir."""
    root = handed_off_run(storage, tmp_path, unique_id, monkeypatch)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_b = RunLayout(root, unique_id, STAMP).run_dir
    run_b.mkdir(parents=True)
    (run_b / "mesh").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafePathError, match=r"mesh.*symbolic link"):
        local_run_dir(storage, unique_id, STAMP, root)
    assert list(elsewhere.iterdir()) == []


def test_a_symlinked_rightsize_record_or_folder_is_never_handed_off(
    storage: StorageHook, tmp_path: Path, unique_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rightsize.json that was a link to a 0600 file elsewhere was uploaded into the hand-off (and from there
    published); a folder that was a link was skipped in silence."""
    on_host(monkeypatch, "host-a", tmp_path / "a")
    run_a = RunLayout(tmp_path / "a", unique_id, STAMP).run_dir
    write_files(run_a, {"mesh/m.obj": b"v 0 0 0\n"})
    secret = tmp_path / "credentials.json"
    secret.write_text('{"secret_key": "not for the bucket"}')
    secret.chmod(0o600)
    (run_a / "rightsize.json").symlink_to(secret)
    with pytest.raises(UnsafePathError, match=r"rightsize\.json"):
        hand_off(storage, run_a, unique_id, STAMP)
    assert storage.list_keys("output", work_prefix(unique_id, STAMP)) == []
    (run_a / "rightsize.json").unlink()
    outside = tmp_path / "outside"
    write_files(outside, {"r.log": b"log"})
    (run_a / "logs").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="logs"):
        hand_off(storage, run_a, unique_id, STAMP)
    assert storage.list_keys("output", work_prefix(unique_id, STAMP)) == []


def test_a_hand_off_naming_another_job_or_run_is_refused(
    storage: StorageHook, tmp_path: Path, unique_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """read_handoff took any handoff.json at the run's prefix, so a worker could hand job B the files of job A."""
    other = f"{unique_id}-a"
    on_host(monkeypatch, "host-a", tmp_path / "a")
    run_a = RunLayout(tmp_path / "a", other, STAMP).run_dir
    write_files(run_a, {"mesh/m.obj": b"v 0 0 0\n"})
    hand_off(storage, run_a, other, STAMP)
    worker = StorageHook("minio_worker")
    body = storage.get_bytes("output", work_prefix(other, STAMP) + HANDOFF_NAME)
    worker.put_bytes("output", work_prefix(unique_id, STAMP) + HANDOFF_NAME, body)
    with pytest.raises(RunMismatchError, match=f"names job {other}"):
        read_handoff(storage, unique_id, STAMP)
    with pytest.raises(RunMismatchError):
        local_run_dir(storage, unique_id, STAMP, tmp_path / "b")
    later = "20261202T110000Z"  # the right job, another run
    worker.put_bytes("output", work_prefix(other, later) + HANDOFF_NAME, body)
    with pytest.raises(RunMismatchError, match=f"run {STAMP}"):
        read_handoff(storage, other, later)
