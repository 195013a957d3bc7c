"""A restore withholds a run's SUCCESS while any file of the run is missing: when the backup itself lacks a
file (it was taken after the file was lost, before a scrub noticed), and at every point of a restore that
stops part-way. On a stack of this module's own (the drill's fixture: a restore writes into ``output``,
the only buckets a catalog may name), restoring one job at a time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from e2e3d_provider.lifecycle.durability import restore as restore_module
from e2e3d_provider.lifecycle.durability.backup import run_backup
from e2e3d_provider.lifecycle.durability.restore import run_restore
from e2e3d_provider.lifecycle.results.publish import publish_run
from e2e3d_provider.lifecycle.results.published import fetch_published
from tests.helpers import write_files
from tests.test_durability import Drill, drill  # noqa: F401  (the drill's own stack, for this module too)

STAMP = "20260403T000000Z"
FILES = {
    "mesh/model.obj": b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n" + os.urandom(64),
    "mesh/model.mtl": b"newmtl m\n",
    "texture/albedo.png": os.urandom(4096),
    "pointcloud/points.ply": os.urandom(2048),
}


def backed_up_job(d: Drill, root: Path, job_id: str, lose: str | None = None) -> None:
    """A job published in ``output`` (with ``lose`` gone from it, SUCCESS still there), then backed up."""
    write_files(root / job_id, FILES)
    publish_run(d.storage, root / job_id, job_id, STAMP, "output")
    if lose:
        d.storage.delete_object("output", f"{job_id}/{lose}")
    run_backup(d.storage, d.target, d.metadata, d.spool, buckets=("output",))


def lose_the_job(d: Drill, job_id: str) -> None:
    d.storage.delete_prefix("output", f"{job_id}/", all_versions=True)
    assert d.storage.list_keys("output", f"{job_id}/") == []


def test_a_backup_that_lacks_a_file_of_a_run_restores_the_rest_but_not_its_success(
    drill: Drill,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    d, job = drill, "restore-lacking"
    backed_up_job(d, tmp_path, job, lose="texture/albedo.png")
    catalogued = {e.key for e in d.target.catalog(d.target.snapshot()) if e.key.startswith(f"{job}/")}
    assert f"{job}/SUCCESS" in catalogued and f"{job}/texture/albedo.png" not in catalogued
    lose_the_job(d, job)

    restored = run_restore(d.target, d.storage, d.metadata, d.spool, job_id=job, schema=False)
    assert restored.restored_objects == len(catalogued) - 1  # everything but the marker
    assert [w.split(":")[0] for w in restored.withheld] == [f"output/{job}/SUCCESS"]
    assert "texture/albedo.png: missing" in restored.withheld[0]
    assert not d.storage.exists("output", f"{job}/SUCCESS")
    assert d.storage.exists("output", f"{job}/metadata.json")


def test_a_restore_stopped_part_way_leaves_no_success_over_the_files_still_missing(
    drill: Drill,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d, job = drill, "restore-stopped"
    backed_up_job(d, tmp_path, job)
    lose_the_job(d, job)
    monkeypatch.setattr(restore_module, "BATCH_FILES", 2)  # objects come back two at a time
    real_batch = restore_module._restore_batch
    seen: list[set[str]] = []

    def restore_batches_until(stop: int):
        def batch(*args, **kwargs):
            if len(seen) == stop:
                raise RuntimeError("restore interrupted")
            real_batch(*args, **kwargs)
            seen.append(set(d.storage.list_keys("output", f"{job}/")))

        return batch

    for stop in (1, 2):  # stopped after one batch, after two; a marker over what is there is never allowed
        seen.clear()
        monkeypatch.setattr(restore_module, "_restore_batch", restore_batches_until(stop))
        with pytest.raises(RuntimeError, match="restore interrupted"):
            run_restore(d.target, d.storage, d.metadata, d.spool, job_id=job, schema=False)
        here = set(d.storage.list_keys("output", f"{job}/"))
        assert here and len(here) < len(FILES) + 2, here
        assert f"{job}/SUCCESS" not in here, f"SUCCESS restored over {sorted(here)}"
        assert all(f"{job}/SUCCESS" not in keys for keys in seen)
    monkeypatch.setattr(restore_module, "_restore_batch", real_batch)
    finished = run_restore(d.target, d.storage, d.metadata, d.spool, job_id=job, schema=False)
    assert finished.withheld == [] and d.storage.exists("output", f"{job}/SUCCESS")
    fetch_published(d.storage, job, tmp_path / "whole")  # every byte against the manifest
