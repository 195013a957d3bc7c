"""A producer's local workspace on whatever host its task runs: staged inputs in, results written back.

:func:`run_in_workspace` gives user code (a reconstruction) the dataset through this host's read-through
cache, a run directory and a temp directory, runs it with the write-back cache uploading its files as
they appear, and hands the run on through object storage. On a host other than the staging one the
directories are scratch: removed once handed on.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from e2e3d_provider.core.layout import BUCKET_INPUT, BUCKET_OUTPUT, RunLayout, validate_id, validate_stamp
from e2e3d_provider.core.layout import input_dir as input_dir_of
from e2e3d_provider.core.local_paths import confined_run_dir, remove_tree
from e2e3d_provider.core.manifest import refuse_links
from e2e3d_provider.core.transfer import TransferResult
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.results.handoff import HandOff
from e2e3d_provider.lifecycle.worker.input_cache import reading
from e2e3d_provider.lifecycle.worker.rebuild import local_input_dir
from e2e3d_provider.lifecycle.worker.stage_in import mirror_models
from e2e3d_provider.lifecycle.worker.write_back import WriteBack, WriteBackStats

R = TypeVar("R")


@dataclass(frozen=True)
class Workspace:
    """Where a producer reads its inputs and writes its results on this host.

    ``input_dir`` holds the staged images (shared with other runs of the dataset on this host: read
    them, never write them); results go below ``run_dir`` (``mesh/``, ``textures/``, ``pointcloud/``,
    ``logs/``, ``temp/``), working files in ``temp_dir``."""

    dataset: str
    job_id: str
    stamp: str
    host: str
    input_dir: Path
    run_dir: Path
    temp_dir: Path
    models_dir: Path | None = None


@dataclass
class Produced:
    """What a workspace run gave: the producer's return value, the hand-off, what moved and when."""

    value: Any
    workspace: Workspace
    handoff: HandOff
    sent: TransferResult
    write_back: WriteBackStats
    staged_input: TransferResult | None


def run_in_workspace(
    storage: StorageHook,
    data_root: Path,
    staged: Mapping[str, Any],
    produce: Callable[[Workspace], R],
    *,
    input_bucket: str = BUCKET_INPUT,
    output_bucket: str = BUCKET_OUTPUT,
    settle: float = 1.0,
    interval: float = 0.5,
    concurrency: int = 4,
) -> Produced:
    """Run ``produce`` in a workspace built from ``staged`` (the stage-in XCom: dataset, job_id, stamp and,
    as hints, the host and paths it staged to) and hand its results on. ``produce`` failing leaves no
    hand-off (its files already sent stay in the work prefix, so the retry sends only the rest)."""
    dataset, job_id = validate_id(staged["dataset"], "dataset"), validate_id(staged["job_id"], "job_id")
    stamp = validate_stamp(staged["stamp"])
    here = staged.get("host") == socket.gethostname() and Path(str(staged.get("output_dir", ""))).is_dir()
    hinted = staged.get("input_dir")
    on_staging_host = bool(hinted) and staged.get("host") == socket.gethostname() and Path(str(hinted)).is_dir()
    # the reader's lock first: from here on no cache trim on this host can take the dataset from under us
    with reading(Path(str(hinted)) if on_staging_host else input_dir_of(data_root, dataset)):
        return _run_locked(
            storage,
            data_root,
            staged,
            produce,
            dataset,
            job_id,
            stamp,
            here,
            input_bucket,
            output_bucket,
            settle,
            interval,
            concurrency,
        )


def _run_locked(
    storage: StorageHook,
    data_root: Path,
    staged: Mapping[str, Any],
    produce: Callable[[Workspace], R],
    dataset: str,
    job_id: str,
    stamp: str,
    here: bool,
    input_bucket: str,
    output_bucket: str,
    settle: float,
    interval: float,
    concurrency: int,
) -> Produced:
    input_dir, staged_input = local_input_dir(
        storage, dataset, data_root, staged.get("input_dir"), staged.get("host"), bucket=input_bucket
    )
    layout = RunLayout(data_root, job_id, stamp)
    # every file of the run directory is handed on: it must be the run's own under the data root, no link on the way
    run_dir = confined_run_dir(staged["output_dir"], data_root, job_id, stamp) if here else layout.run_dir
    refuse_links(data_root, run_dir)
    temp_dir = Path(staged["temp_dir"]) if here and staged.get("temp_dir") else layout.temp_dir
    models_dir = None
    if staged.get("models"):  # the models: the staging host's copy, else mirrored here from their bucket
        hinted = staged.get("models_dir")
        if here and hinted and Path(hinted).is_dir():
            models_dir = Path(hinted)
        else:
            models_dir, _ = mirror_models(storage, data_root, staged["models"]["prefix"], staged["models"]["bucket"])
    workspace = Workspace(
        dataset,
        job_id,
        stamp,
        socket.gethostname(),
        input_dir,
        run_dir,
        temp_dir,
        models_dir,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    temp_dir.mkdir(parents=True, exist_ok=True)
    try:
        writer = WriteBack(
            storage,
            run_dir,
            job_id,
            stamp,
            bucket=output_bucket,
            settle=settle,
            interval=interval,
            concurrency=concurrency,
        )
        with writer:
            value = produce(workspace)
        handed, sent = writer.finish()
    finally:
        if not here:  # a copy made on this host for this task only: scratch, handed on (or failed)
            remove_tree(run_dir)
            remove_tree(temp_dir)
    return Produced(value, workspace, handed, sent, writer.stats, staged_input)
