"""Tests that each break when one line of the commit protocol or the read-through cache is removed.

Each was checked by planting the one-line bug it names (see the closing note of issue 11) and seeing
it fail, then passing without it.
"""

from __future__ import annotations

import hashlib
import io
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
    # a marker that names no manifest (not one a publish wrote) vouches for nothing
    storage.put_bytes(bucket, f"{unique_id}/SUCCESS", json.dumps({"job_id": unique_id}).encode(), "application/json")
    with pytest.raises(ChecksumMismatchError, match="names no manifest"):
        read_published_manifest(storage, bucket, unique_id)


def replace_keeping_the_label(storage: StorageHook, bucket: str, key: str) -> None:
    """Overwrite an object with flipped bytes, keeping its size and its old x-amz-meta-sha256 label."""
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


def replace_with_a_recomputed_label(storage: StorageHook, bucket: str, key: str) -> bytes:
    """Overwrite an object with other bytes of the same size and a sha256 label recomputed to match."""
    data = bytearray(storage.client.get_object(bucket, key).read())
    data[10] ^= 0xFF
    label = hashlib.sha256(data).hexdigest()
    storage.client.put_object(bucket, key, io.BytesIO(bytes(data)), len(data), metadata={"sha256": label})
    return bytes(data)


def test_a_published_job_downloads_verified_against_its_manifest_not_its_labels(
    storage: StorageHook, bucket: str, tmp_path: Path, unique_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from e2e3d_provider.lifecycle.publish import fetch_published

    publish_run(storage, run_dir(tmp_path / "run"), unique_id, STAMP, bucket)
    good = tmp_path / "good"
    first = fetch_published(storage, unique_id, good, bucket=bucket)
    assert (
        first.files == len(FILES) and (good / "textures" / "texture.png").read_bytes() == FILES["textures/texture.png"]
    )
    from e2e3d_provider.cli import main

    # a bucket of its own, outside every role's grant: the admin connection (the api role is refused it)
    assert (
        main(["fetch", unique_id, str(tmp_path / "cli-good"), "--bucket", bucket, "--minio-conn-id", "minio_admin"])
        == 0
    )
    assert f"{len(FILES)} files downloaded" in capsys.readouterr().out
    key = f"{unique_id}/pointcloud/pointcloud.ply"
    forged = replace_with_a_recomputed_label(storage, bucket, key)
    # the label-trusting generic download takes the forged bytes: the label matches them
    storage.download_prefix(bucket, unique_id, tmp_path / "by-label")
    assert (tmp_path / "by-label" / "pointcloud" / "pointcloud.ply").read_bytes() == forged
    # the published-job download checks the manifest's sha256 and writes nothing under the final name
    dest = tmp_path / "fresh"
    with pytest.raises(ChecksumMismatchError, match=r"pointcloud\.ply: downloaded bytes do not match.*manifest"):
        fetch_published(storage, unique_id, dest, bucket=bucket)
    assert not (dest / "pointcloud" / "pointcloud.ply").exists()
    # and a local copy that holds the published bytes is kept, never replaced by the forged ones
    again = fetch_published(storage, unique_id, good, bucket=bucket)
    assert again.skipped_files == len(FILES) and again.files == 0
    assert (good / "pointcloud" / "pointcloud.ply").read_bytes() == FILES["pointcloud/pointcloud.ply"]
    # `e2e3d fetch` is that download from the command line: a clear error, no traceback, nothing written
    assert main(["fetch", unique_id, str(tmp_path / "cli"), "--bucket", bucket, "--minio-conn-id", "minio_admin"]) == 2
    assert "downloaded bytes do not match the manifest" in capsys.readouterr().err
    assert not (tmp_path / "cli" / "pointcloud" / "pointcloud.ply").exists()


def test_download_file_with_a_manifest_checksum_refuses_an_object_without_any_label(
    storage: StorageHook, bucket: str, tmp_path: Path, unique_id: str
) -> None:
    key = f"{unique_id}/plain.bin"
    storage.client.put_object(bucket, key, io.BytesIO(b"what is stored"), 14)  # no sha256 label at all
    expected = hashlib.sha256(b"what was publ").hexdigest()
    with pytest.raises(ChecksumMismatchError, match="manifest"):
        storage.download_file(bucket, key, tmp_path / "plain.bin", sha256=expected, size=13)
    assert not (tmp_path / "plain.bin").exists()
    right = hashlib.sha256(b"what is stored").hexdigest()
    assert storage.download_file(bucket, key, tmp_path / "plain.bin", sha256=right, size=14)
    assert not storage.download_file(bucket, key, tmp_path / "plain.bin", sha256=right, size=14)  # cached
