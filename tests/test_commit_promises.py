"""Tests that each break when one line of the commit protocol or the read-through cache is removed.

Each was checked by planting the one-line bug it names (see the closing note of issue 11) and seeing
it fail, then passing without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2e3d_provider.exceptions import ChecksumMismatchError, E2E3DError
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.publish import publish_run, read_published_manifest
from tests.conftest import write_files

STAMP = "20260105T000000Z"
FILES = {
    "mesh/reconstructed_mesh.obj": b"v 1 2 3\n" * 200,
    "textures/texture.png": b"\x89PNG" + b"t" * 3000,
    "pointcloud/pointcloud.ply": b"ply\n" + b"p" * 5000,
    "logs/reconstruct.log": b"ok\n",
}


def run_dir(root: Path) -> Path:
    write_files(root, FILES)
    return root


def test_a_rerun_that_fails_midway_leaves_no_old_success_over_a_half_replaced_set(
    storage: StorageHook, bucket: str, tmp_path: Path, unique_id: str
) -> None:
    """Planted bug: skip the removal of the old SUCCESS at the start of a publish."""
    run = run_dir(tmp_path / "run")
    publish_run(storage, run, unique_id, STAMP, bucket)
    assert storage.exists(bucket, f"{unique_id}/SUCCESS")
    (run / "mesh" / "reconstructed_mesh.obj").write_bytes(b"v 9 9 9\n" * 300)  # the rerun changes a file

    def fail_after_the_first_file(done: int, total: int) -> None:
        raise RuntimeError("worker lost")  # a failure injected into the rerun's upload

    with pytest.raises((E2E3DError, RuntimeError)):
        publish_run(storage, run, unique_id, STAMP, bucket, on_progress=fail_after_the_first_file)
    assert not storage.exists(bucket, f"{unique_id}/SUCCESS")
    assert not (run / "SUCCESS").exists()


def test_an_object_lost_after_upload_stops_the_publish_before_its_manifest_and_success(
    storage: StorageHook, bucket: str, tmp_path: Path, unique_id: str
) -> None:
    """Planted bug: skip verify_remote(...) before the manifest is written."""
    run = run_dir(tmp_path / "run")

    def lose_one_object_once_all_are_up(done: int, total: int) -> None:
        if done == total:
            storage.delete_object(bucket, f"{unique_id}/pointcloud/pointcloud.ply")

    with pytest.raises(ChecksumMismatchError, match=r"pointcloud/pointcloud\.ply: missing"):
        publish_run(storage, run, unique_id, STAMP, bucket, on_progress=lose_one_object_once_all_are_up)
    assert not storage.exists(bucket, f"{unique_id}/SUCCESS")
    assert not storage.exists(bucket, f"{unique_id}/metadata.json")


def test_a_staged_file_damaged_at_the_same_size_is_fetched_again(
    storage: StorageHook, bucket: str, tmp_path: Path, unique_id: str
) -> None:
    """Planted bug: the read-through cache keeps a local file when only its size matches."""
    source = run_dir(tmp_path / "src")
    storage.upload_dir(source, bucket, unique_id)
    staged = tmp_path / "staged"
    storage.download_prefix(bucket, unique_id, staged)
    damaged = staged / "textures" / "texture.png"
    data = bytearray(damaged.read_bytes())
    data[100] ^= 0xFF  # one flipped byte: same size, other bytes
    damaged.write_bytes(bytes(data))
    again = storage.download_prefix(bucket, unique_id, staged)
    assert (again.files, again.skipped_files) == (1, len(FILES) - 1)
    assert damaged.read_bytes() == FILES["textures/texture.png"]


def test_a_manifest_replaced_behind_a_valid_success_is_refused(
    storage: StorageHook, bucket: str, tmp_path: Path, unique_id: str
) -> None:
    """Planted bug: read the SUCCESS marker's manifest hash from the wrong field (so it is never checked)."""
    publish_run(storage, run_dir(tmp_path / "run"), unique_id, STAMP, bucket)
    manifest = json.loads(storage.get_bytes(bucket, f"{unique_id}/metadata.json"))
    manifest["statistics"]["forged"] = True  # still a valid manifest of this job, just not the published one
    storage.put_bytes(bucket, f"{unique_id}/metadata.json", json.dumps(manifest).encode(), "application/json")
    with pytest.raises(ChecksumMismatchError, match="is not the manifest its SUCCESS marker names"):
        read_published_manifest(storage, bucket, unique_id)


def replace_keeping_the_label(storage: StorageHook, bucket: str, key: str) -> None:
    """Overwrite an object with flipped bytes, keeping its size and its old x-amz-meta-sha256 label."""
    import io

    old = storage.stat(bucket, key)
    data = bytearray(storage.client.get_object(bucket, key).read())
    data[10] ^= 0xFF
    storage.client.put_object(bucket, key, io.BytesIO(bytes(data)), len(data), metadata={"sha256": old.sha256})


def test_the_archive_verifies_bytes_not_labels(
    storage: StorageHook, bucket: str, tmp_path: Path, unique_id: str
) -> None:
    from e2e3d_provider.lifecycle.archive import archive_job

    archive = f"a-{unique_id[-10:]}"
    storage.client.make_bucket(archive)
    publish_run(storage, run_dir(tmp_path / "run"), unique_id, STAMP, bucket)
    published = read_published_manifest(storage, bucket, unique_id)
    assert all(entry.etag for entry in published.files)  # recorded at publish, from the server's listing
    replace_keeping_the_label(storage, bucket, f"{unique_id}/pointcloud/pointcloud.ply")
    with pytest.raises(ChecksumMismatchError, match=r"pointcloud/pointcloud\.ply: the stored bytes hash to"):
        archive_job(storage, unique_id, source_bucket=bucket, archive_bucket=archive)
    assert not [key for key in storage.list_keys(archive) if key.endswith("SUCCESS")]


def test_one_damaged_job_is_reported_and_does_not_stop_the_archive_sweep(
    storage: StorageHook, metadata, tmp_path: Path, unique_id: str
) -> None:
    from e2e3d_provider.lifecycle.archive import archive_completed

    good, bad = f"{unique_id}-good", f"{unique_id}-bad"
    for job in (good, bad):
        publish_run(storage, run_dir(tmp_path / job), job, STAMP, "output")
        metadata.record_job(job, STAMP, "ds", "running")
        metadata.record_job(job, STAMP, "ds", "succeeded")
    replace_keeping_the_label(storage, "output", f"{bad}/mesh/reconstructed_mesh.obj")
    result = archive_completed(storage, metadata, limit=10_000)
    assert bad in result["damaged"] and good not in result["damaged"]
    assert metadata.get_job(good, STAMP)["status"] == "archived"
    assert metadata.get_job(bad, STAMP)["status"] == "succeeded"  # left for someone to look at
