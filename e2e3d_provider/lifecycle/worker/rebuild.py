"""A run or dataset directory on this host, rebuilt from object storage when it was made on another.

Tasks may run on any host: a task that needs a run directory another task wrote reads it back from the
run's hand-off (:mod:`e2e3d_provider.lifecycle.results.handoff`), moving only the files that differ, and
a task that needs a staged dataset stages it through this host's content-addressed cache. Every
directory rebuilt is the run's own below the data root, reached with no symbolic link on the way.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from e2e3d_provider.core.layout import BUCKET_INPUT, BUCKET_OUTPUT, HANDOFF_NAME, RunLayout, work_prefix
from e2e3d_provider.core.local_paths import REMEDIES, confined_run_dir
from e2e3d_provider.core.manifest import refuse_links
from e2e3d_provider.core.transfer import TransferResult
from e2e3d_provider.exceptions import LocalPathError
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.results.handoff import read_handoff
from e2e3d_provider.lifecycle.worker.input_cache import stage_dataset


def materialize(
    storage: StorageHook, job_id: str, stamp: str, run_dir: Path, bucket: str = BUCKET_OUTPUT
) -> TransferResult | None:
    """Make ``run_dir`` exactly the handed-off run: each file fetched unless already there with the
    recorded sha256, each checked against ``handoff.json``, files it does not name removed. Returns what
    moved, or ``None`` when the run was never handed off."""
    manifest = read_handoff(storage, job_id, stamp, bucket)
    if manifest is None:
        return None
    return storage.download_prefix(
        bucket, work_prefix(job_id, stamp), run_dir, manifest=manifest, delete_extraneous=True
    )


@dataclass(frozen=True)
class LocalRun:
    """This host's copy of a run: where it is, what rebuilding it moved (``None``: not handed off, the
    local directory as it was), and whether it is a copy made here for one task (scratch, not the run
    directory its staging host keeps)."""

    run_dir: Path
    moved: TransferResult | None
    rebuilt: bool


def local_run_dir(
    storage: StorageHook,
    job_id: str,
    stamp: str,
    data_root: Path,
    hint: str | Path | None = None,
    origin_host: str | None = None,
    bucket: str = BUCKET_OUTPUT,
) -> LocalRun:
    """This host's copy of a run directory. When the run was handed off, the hand-off is the truth: the
    directory (``hint``, a path from XCom, when it was written on this host; else the run's place under
    this host's ``data_root``) is made equal to it, moving only what differs. Without a hand-off, ``hint``
    is used as it is when it is here; a path that only exists on another host is a LocalPathError naming
    both hosts. ``hint`` must be the run's directory under ``data_root``, and no step below the root a
    symbolic link (UnsafePathError otherwise, before anything is touched)."""
    here = socket.gethostname()
    origin_dir = bool(hint) and Path(str(hint)).is_dir() and (not origin_host or origin_host == here)
    # the directory rebuilt (every file the hand-off does not name removed) must be the run's own under the
    # data root, reached with no symbolic link on the way: never a folder a template or XCom happens to name
    run_dir = RunLayout(data_root, job_id, stamp).run_dir
    if origin_dir:
        run_dir = confined_run_dir(str(hint), data_root, job_id, stamp)
    else:
        refuse_links(data_root, run_dir)
    moved = materialize(storage, job_id, stamp, run_dir, bucket)
    if moved is None and not origin_dir:
        raise LocalPathError(
            f"run directory {hint or run_dir} was written on host {origin_host or '?'!r}, but this task runs "
            f"on {here!r}, and the run was not handed off to object storage ({bucket}/{work_prefix(job_id, stamp)}"
            f"{HANDOFF_NAME} is missing): hand it off from the producing task, or {REMEDIES}."
        )
    return LocalRun(run_dir, moved, rebuilt=not origin_dir)


def local_input_dir(
    storage: StorageHook,
    dataset: str,
    data_root: Path,
    hint: str | Path | None = None,
    origin_host: str | None = None,
    bucket: str = BUCKET_INPUT,
) -> tuple[Path, TransferResult | None]:
    """This host's copy of a staged dataset: ``hint`` when staged on this host and here, else the dataset
    staged into this host's ``data_root`` through its content-addressed cache (images it holds move no bytes)."""
    if hint and Path(hint).is_dir() and (not origin_host or origin_host == socket.gethostname()):
        return Path(hint), None
    staged = stage_dataset(storage, data_root, dataset, bucket)
    return staged.local_dir, staged.transfer
