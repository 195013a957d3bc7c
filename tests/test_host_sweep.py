"""Every worker's scratch stays bounded: each disk-using task ends with a sweep of its own worker's data root."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.inputs.ingest import ingest
from e2e3d_provider.lifecycle.worker.host_sweep import ScratchBounds, sweep_host
from tests.helpers import make_dataset

DAY = 86400.0


def aged(path: Path, seconds: float) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    when = time.time() - seconds
    os.utime(path, (when, when))
    return path


def test_a_sweep_removes_old_temp_dirs_and_bounds_the_cache_at_most_once_per_interval(
    storage: StorageHook, tmp_path: Path, unique_id: str
) -> None:
    from e2e3d_provider.lifecycle.worker.input_cache import stage_dataset

    root = tmp_path / "worker"
    make_dataset(tmp_path / "src", [901, 902])
    ingest(storage, tmp_path / "src", unique_id)
    staged = stage_dataset(storage, root, unique_id)
    old, fresh = aged(root / "temp" / "old_run", 2 * DAY), aged(root / "temp" / "fresh_run", 60)
    bounds = ScratchBounds(cache_max_bytes=0, cache_max_age_hours=1, temp_max_age_hours=24, every_seconds=3600)
    os.utime(staged.local_dir.parent / f".{unique_id}.lock", (time.time() - 2 * 3600,) * 2)

    done = sweep_host(root, bounds, now=time.time() + 3600)  # an hour on: past the images' grace
    assert done is not None and done["temp"]["names"] == ["old_run"]
    assert done["cache"]["removed_datasets"] == [unique_id] and done["cache"]["held_bytes"] == 0
    assert not old.exists() and fresh.exists() and not staged.local_dir.exists()
    aged(root / "temp" / "another_old_run", 2 * DAY)
    assert sweep_host(root, bounds) is None  # swept less than an hour ago: nothing to do yet
    assert sweep_host(root, bounds, force=True)["temp"]["names"] == ["another_old_run"]


def test_stage_in_ends_with_a_sweep_of_its_own_worker(storage: StorageHook, tmp_path: Path, unique_id: str) -> None:
    from e2e3d_provider.operators.stage_in import StageInOperator

    make_dataset(tmp_path / "src", [911])
    ingest(storage, tmp_path / "src", unique_id)
    root = tmp_path / "worker"
    old = aged(root / "temp" / "left_by_a_crash", 3 * DAY)
    op = StageInOperator(
        task_id="s", dataset=unique_id, job_id=unique_id, data_root=str(root), stamp="20260101T000000Z"
    )
    op.post_execute({}, op.execute({}))  # what Airflow's task runner calls once execute returned
    assert not old.exists()
    assert (root / "input" / unique_id / "img_0911.png").is_file()  # just staged: in use, never trimmed


@pytest.mark.parametrize("field", ["cache_max_bytes", "temp_max_age_hours"])
def test_negative_bounds_are_refused(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ScratchBounds(**{field: -1})
