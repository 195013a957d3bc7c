"""Retention removes an archived run's output only when its archive copy is complete (its SUCCESS is
there), and never while a newer run of the job owns the output: one that is publishing (recorded running,
its SUCCESS removed, part of its files up) or one a scrub found damaged.

The runs here finished long ago (``finished_at`` set back 20 years) and retention is asked for 19 years,
so it looks at these runs and at no other test's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e3d_provider.core.layout import archive_prefix, output_prefix
from e2e3d_provider.exceptions import StorageError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.durability.archive import archive_and_record
from e2e3d_provider.lifecycle.durability.retention import apply_retention
from e2e3d_provider.lifecycle.results.publish import publish_run
from e2e3d_provider.lifecycle.results.record import record_job_run
from tests.helpers import write_files

OLD, NEW = "20260101T000000Z", "20260102T000000Z"
RETENTION_DAYS = 19 * 365


def published_and_archived(storage: StorageHook, metadata: MetadataHook, root: Path, job_id: str) -> None:
    """Run OLD of ``job_id``: published, recorded, archived (complete), finished 20 years ago."""
    run = root / f"{job_id}-old"
    write_files(run, {"mesh/reconstructed_mesh.obj": b"v old\n" * 50, "logs/run.log": b"old\n"})
    publish_run(storage, run, job_id, OLD, "output")
    record_job_run(metadata, storage, job_id, OLD, "ds", "succeeded")
    archive_and_record(storage, metadata, job_id)
    with metadata.transaction() as cur:
        cur.execute(
            "UPDATE e2e3d.jobs SET finished_at = now() - interval '20 years' WHERE job_id = %s AND stamp = %s",
            (job_id, OLD),
        )


def retention(storage: StorageHook, metadata: MetadataHook) -> dict:
    return apply_retention(storage, metadata, RETENTION_DAYS)


def test_output_is_kept_until_the_archive_copy_has_its_success(
    storage: StorageHook, metadata: MetadataHook, tmp_path: Path, unique_id: str
) -> None:
    published_and_archived(storage, metadata, tmp_path, unique_id)
    archived_marker = archive_prefix(unique_id, OLD) + "SUCCESS"
    marker = storage.get_bytes("archive", archived_marker)
    storage.delete_object("archive", archived_marker)  # an archive copy whose last write never came
    kept = set(storage.list_keys("output", output_prefix(unique_id)))
    assert {f"{unique_id}/SUCCESS", f"{unique_id}/metadata.json"} <= kept

    waiting = retention(storage, metadata)
    assert unique_id not in waiting["jobs"] and waiting["waiting"] >= 1
    assert set(storage.list_keys("output", output_prefix(unique_id))) == kept
    assert metadata.get_job(unique_id, OLD)["output_removed_at"] is None  # looked at again next time

    storage.put_bytes("archive", archived_marker, marker, "application/json")  # the archive completes
    removed = retention(storage, metadata)
    assert unique_id in removed["jobs"]
    assert storage.list_keys("output", output_prefix(unique_id)) == []


@pytest.mark.parametrize("newer", ["publishing", "damaged"])
def test_a_newer_run_that_is_publishing_or_damaged_keeps_the_output(
    storage: StorageHook, metadata: MetadataHook, tmp_path: Path, unique_id: str, newer: str
) -> None:
    published_and_archived(storage, metadata, tmp_path, unique_id)
    run = tmp_path / f"{unique_id}-new"
    write_files(run, {"mesh/reconstructed_mesh.obj": b"v new\n" * 80, "textures/texture.png": b"png new"})
    metadata.record_job(unique_id, NEW, "ds", "running")
    if newer == "publishing":  # its publish has removed the old SUCCESS and sent a file; it goes on later

        def stop_after_the_first_file(done: int, total: int) -> None:
            raise RuntimeError("still publishing")

        with pytest.raises(StorageError, match="still publishing"):
            publish_run(storage, run, unique_id, NEW, "output", on_progress=stop_after_the_first_file)
    else:  # published, then found damaged by a scrub: its marker is gone, its files stay for a repair
        publish_run(storage, run, unique_id, NEW, "output")
        record_job_run(metadata, storage, unique_id, NEW, "ds", "succeeded")
        storage.delete_object("output", f"{unique_id}/SUCCESS")
        metadata.record_job(unique_id, NEW, "ds", "damaged", error="scrub: textures/texture.png missing")
    assert not storage.exists("output", f"{unique_id}/SUCCESS")
    kept = set(storage.list_keys("output", output_prefix(unique_id)))
    assert kept, "the newer run left nothing in output"

    result = retention(storage, metadata)
    assert unique_id not in result["jobs"]
    assert set(storage.list_keys("output", output_prefix(unique_id))) == kept
    assert storage.exists("archive", archive_prefix(unique_id, OLD) + "SUCCESS")
