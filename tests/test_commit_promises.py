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
from e2e3d_provider.lifecycle.results.publish import publish_run
from e2e3d_provider.lifecycle.results.published import read_published_manifest
from tests.helpers import edit_first_file, forge_manifest, write_files

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
    from e2e3d_provider.lifecycle.durability.archive import archive_job

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
    from e2e3d_provider.lifecycle.durability.archive import archive_completed

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
    from e2e3d_provider.lifecycle.results.published import fetch_published

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
    assert main(["fetch", unique_id, str(tmp_path / "cli"), "--bucket", bucket, "--minio-conn-id", "minio_admin"]) == 1
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


# --- issue 28: hostile writers. A worker's keys may write anything in ``output``; the archive, which the
# --- maintenance role runs, must never let that reach ``archive`` or stop its sweep.

OLD, NEW = "20260105T000000Z", "20260106T000000Z"


def succeeded(metadata, job_id: str, stamp: str) -> None:
    metadata.record_job(job_id, stamp, "ds", "running")
    metadata.record_job(job_id, stamp, "ds", "succeeded")


def archived_bytes(storage: StorageHook, job_id: str, stamp: str) -> dict[str, bytes]:
    from e2e3d_provider.core.layout import archive_prefix

    prefix = archive_prefix(job_id, stamp)
    return {key: storage.get_bytes("archive", key) for key in storage.list_keys("archive", prefix)}


def forge_a_published_run(tmp_path: Path, job_id: str, stamp: str) -> None:
    """What a writer with the worker's keys can do: publish its own bytes for ``job_id`` under any stamp,
    with a manifest and a SUCCESS marker that agree with them."""
    worker = StorageHook("minio_worker")
    forged = {rel: b"forged " + data for rel, data in FILES.items()}
    write_files(tmp_path / "forged", forged)
    publish_run(worker, tmp_path / "forged", job_id, stamp, "output")


def test_a_worker_claiming_an_archived_runs_stamp_never_replaces_its_archive_copy(
    storage: StorageHook, metadata, tmp_path: Path, unique_id: str
) -> None:
    """Issue 28 (2): the sweep copied output to archive/J/J_<the manifest's stamp>/ before comparing that stamp
    with PostgreSQL's, into a prefix that already held the archived run and its SUCCESS."""
    from e2e3d_provider.lifecycle.durability.archive import archive_and_record, archive_completed

    publish_run(storage, run_dir(tmp_path / "old"), unique_id, OLD, "output")
    succeeded(metadata, unique_id, OLD)
    archive_and_record(storage, metadata, unique_id)
    assert metadata.get_job(unique_id, OLD)["status"] == "archived"
    before = archived_bytes(storage, unique_id, OLD)
    assert any(key.endswith("/SUCCESS") for key in before)
    publish_run(storage, run_dir(tmp_path / "new"), unique_id, NEW, "output")
    succeeded(metadata, unique_id, NEW)  # the newer run waits for the sweep
    forge_a_published_run(tmp_path, unique_id, OLD)  # ... and a worker writes over it, claiming the old run

    result = archive_completed(storage, metadata, limit=10_000)
    assert archived_bytes(storage, unique_id, OLD) == before  # the archived run's bytes are its own
    assert unique_id in result["damaged"] and unique_id not in result["jobs"]
    assert "not the run PostgreSQL records" in result["problems"][unique_id]
    assert metadata.get_job(unique_id, NEW)["status"] == "succeeded"  # not archived: left for someone to look at
    assert metadata.get_job(unique_id, OLD)["status"] == "archived"


def test_an_archive_copy_with_its_success_is_never_replaced(
    storage: StorageHook, metadata, tmp_path: Path, unique_id: str
) -> None:
    """Issue 28 (2), the other half: whatever stamp the caller expects (or none, as ArchiveOperator without a
    metadata connection), a target prefix that holds a SUCCESS is never written again."""
    from e2e3d_provider.lifecycle.durability.archive import archive_job

    publish_run(storage, run_dir(tmp_path / "old"), unique_id, OLD, "output")
    first = archive_job(storage, unique_id)
    before = archived_bytes(storage, unique_id, OLD)
    again = archive_job(storage, unique_id)  # the same run again (a retried task): nothing rewritten, same answer
    assert (again.archive_key, again.files) == (first.archive_key, first.files)
    assert archived_bytes(storage, unique_id, OLD) == before
    forge_a_published_run(tmp_path, unique_id, OLD)
    with pytest.raises(ChecksumMismatchError, match="already holds run"):
        archive_job(storage, unique_id)
    assert archived_bytes(storage, unique_id, OLD) == before


MALFORMED = {
    "odd figures": edit_first_file({"figures": [["faces", 1, 2]]}),
    "level 1e400": edit_first_file({"role": "lod", "level": "@1e400"}),
    "bad tile row": edit_first_file({"role": "tile", "level": 0, "figures": {"row": "x", "col": 0}}),
    "a ../ path": edit_first_file({"path": "../other-job/mesh/reconstructed_mesh.obj"}),
}


def test_malformed_manifests_are_damaged_jobs_and_the_archive_sweep_goes_on(
    storage: StorageHook, metadata, tmp_path: Path, unique_id: str
) -> None:
    """Issue 28 (8): one malformed manifest made archive_completed raise and end the sweep, so the good jobs
    behind it waited for ever."""
    from e2e3d_provider.lifecycle.durability.archive import archive_completed

    bad = {f"{unique_id}-{n}": edit for n, edit in enumerate(MALFORMED.values())}
    foreign, good = f"{unique_id}-foreign", f"{unique_id}-good"
    for job in [*bad, foreign, good]:
        publish_run(storage, run_dir(tmp_path / job), job, STAMP, "output")
        succeeded(metadata, job, STAMP)
    for job, edit in bad.items():
        forge_manifest(storage, job, edit)
    worker = StorageHook("minio_worker")  # another job's manifest and marker copied in: consistent, but not its own
    for name in ("metadata.json", "SUCCESS"):
        worker.put_bytes("output", f"{foreign}/{name}", storage.get_bytes("output", f"{good}/{name}"))

    result = archive_completed(storage, metadata, limit=10_000)
    assert sorted(job for job in result["damaged"] if job.startswith(unique_id)) == sorted([*bad, foreign])
    assert "belongs to job" in result["problems"][foreign]
    assert metadata.get_job(good, STAMP)["status"] == "archived"
    for job in [*bad, foreign]:
        assert metadata.get_job(job, STAMP)["status"] == "succeeded"
        assert archived_bytes(storage, job, STAMP) == {}  # nothing of a damaged job reaches the archive
