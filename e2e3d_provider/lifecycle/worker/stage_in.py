"""Stage-in: a dataset (and optionally a models prefix) from object storage into a run's local layout."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e3d_provider.core.layout import (
    BUCKET_INPUT,
    BUCKET_MODELS,
    RUN_SUBDIRS,
    RunLayout,
    input_prefix,
    models_dir,
    normalize_prefix,
    validate_id,
)
from e2e3d_provider.core.local_paths import mirror_lock
from e2e3d_provider.core.transfer import TransferResult
from e2e3d_provider.core.xcom import ObjectLocation, StageInXCom
from e2e3d_provider.exceptions import MissingInputError
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.worker.input_cache import stage_dataset


@dataclass
class StageInResult:
    """Where a run's input, output and temp directories are on this host, and what was moved."""

    dataset: str
    job_id: str
    stamp: str
    host: str
    input_dir: Path
    temp_dir: Path
    output_dir: Path
    models_dir: Path | None
    transfers: list[TransferResult] = field(default_factory=list)
    #: where the input lives in object storage: ``{"bucket", "prefix", "manifest_key"}`` (no manifest: None)
    source: ObjectLocation | dict[str, Any] = field(default_factory=dict)
    #: where the models live in object storage: ``{"bucket", "prefix"}``, or None without models
    models: ObjectLocation | None = None

    def to_xcom(self) -> StageInXCom:
        """The XCom contract of DESIGN §5 (plus counters): small, JSON-safe. The object locations
        (``source``, ``models``) are the truth; the local paths are hints, valid on ``host`` only."""
        staged = self.transfers[0]
        xcom: StageInXCom = {
            "dataset": self.dataset,
            "job_id": self.job_id,
            "stamp": self.stamp,
            "host": self.host,
            "input_dir": str(self.input_dir),
            "temp_dir": str(self.temp_dir),
            "output_dir": str(self.output_dir),
            "files": staged.total_files,
            "bytes": staged.bytes + staged.skipped_bytes,
            "transferred_bytes": staged.bytes,
            "seconds": round(staged.seconds, 3),
            "source": self.source,
        }
        if self.models_dir is not None:
            xcom["models_dir"] = str(self.models_dir)
            xcom["models"] = self.models
        return xcom


def stage_in(
    storage: StorageHook,
    root: Path,
    dataset: str,
    job_id: str,
    stamp: str,
    *,
    models_prefix: str | None = None,
    input_bucket: str = BUCKET_INPUT,
    models_bucket: str = BUCKET_MODELS,
) -> StageInResult:
    """Stage the dataset below ``root`` through this host's content-addressed cache (images the host already
    holds, from any dataset, move 0 bytes; each fetched one is checked against its sha256) and mirror
    ``models/<models_prefix>/`` (unchanged files move 0 bytes, files gone from the bucket are removed
    locally), then create the run's output directory (``mesh/ textures/ pointcloud/ logs/ temp/``) and
    temp directory. A dataset with no objects is an error, not an empty run."""
    dataset, job_id = validate_id(dataset, "dataset"), validate_id(job_id, "job_id")
    run = RunLayout(root, job_id, stamp)
    staged = stage_dataset(storage, root, dataset, input_bucket)  # through this host's content-addressed cache
    transfers = [staged.transfer]
    local_models = None
    if models_prefix:
        local_models, models_moved = mirror_models(storage, root, models_prefix, models_bucket)
        transfers.append(models_moved)
    for sub in RUN_SUBDIRS:
        (run.run_dir / sub).mkdir(parents=True, exist_ok=True)
    run.temp_dir.mkdir(parents=True, exist_ok=True)
    return StageInResult(
        dataset,
        job_id,
        run.stamp,
        socket.gethostname(),
        staged.local_dir,
        run.temp_dir,
        run.run_dir,
        local_models,
        transfers,
        source={"bucket": input_bucket, "prefix": input_prefix(dataset), "manifest_key": staged.manifest_key},
        models={"bucket": models_bucket, "prefix": normalize_prefix(models_prefix)} if models_prefix else None,
    )


def mirror_models(
    storage: StorageHook, root: Path, prefix: str, bucket: str = BUCKET_MODELS
) -> tuple[Path, TransferResult]:
    """Mirror ``<bucket>/<prefix>`` into ``<root>/models/<prefix>`` (unchanged files move no bytes, files gone
    from the bucket are removed locally). A prefix with no objects is :class:`MissingInputError`."""
    if not storage.list_keys(bucket, prefix):
        raise MissingInputError(
            f"models prefix {normalize_prefix(prefix)!r} has no objects in bucket {bucket!r}; "
            "upload the models first, or leave models_prefix empty"
        )
    local = models_dir(root, prefix)
    with mirror_lock(local):
        return local, storage.download_prefix(bucket, prefix, local, delete_extraneous=True)
