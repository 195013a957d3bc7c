"""Hand a run's files from task to task through object storage, so each task may run on any host.

A task that produces files (the reconstruction, right-sizing) ends by handing its run directory off to
``output/.work/<job_id>/<job_id>_<stamp>/``: every file uploaded (identical ones skipped), then a
``handoff.json`` naming each with size, sha256 and the ETag the server answered, written last. A task on
another host rebuilds the run directory from it (:func:`materialize`: each file checked against
``handoff.json``; files already there move no bytes). Publishing copies the hand-off server-side
(:func:`e2e3d_provider.lifecycle.results.publish.publish_handoff`), and the work prefix goes once the run is
published. A hand-off without its ``handoff.json`` (a task that died part-way) is never read.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e3d_provider.core.layout import (
    BUCKET_INPUT,
    BUCKET_OUTPUT,
    HANDOFF_NAME,
    VARIANTS_NAME,
    RunLayout,
    work_prefix,
)
from e2e3d_provider.core.local_paths import REMEDIES, confined_run_dir
from e2e3d_provider.core.manifest import FileEntry, Manifest, iter_run_files, refuse_links
from e2e3d_provider.core.transfer import TransferResult
from e2e3d_provider.exceptions import LocalPathError, ObjectNotFoundError, RunMismatchError, UnsafePathError
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.worker.input_cache import stage_dataset


@dataclass(frozen=True)
class HandOff:
    """Where a run's files wait for the next task: bucket, prefix and the hand-off manifest's key."""

    bucket: str
    prefix: str
    files: int
    bytes: int
    sent_bytes: int

    @property
    def manifest_key(self) -> str:
        return self.prefix + HANDOFF_NAME

    def to_xcom(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "manifest_key": self.manifest_key,
            "files": self.files,
            "bytes": self.bytes,
            "sent_bytes": self.sent_bytes,
        }


def handed_files(run_dir: Path) -> list[tuple[str, Path]]:
    """What a hand-off carries: the run's files and right-sizing's record (publish needs it too). Every one
    is the run directory's own: a symbolic link anywhere below it (a record linked to a file elsewhere, a
    linked folder) is refused with UnsafePathError, never followed nor skipped in silence."""
    if run_dir.is_symlink():
        raise UnsafePathError(f"run directory {run_dir} is a symbolic link; a hand-off carries a run's own files")
    files = list(iter_run_files(run_dir, links=False))
    record = run_dir / VARIANTS_NAME
    refuse_links(run_dir, record)
    if record.is_file():
        files.append((VARIANTS_NAME, record))
    return files


def hand_off(
    storage: StorageHook, run_dir: Path, job_id: str, stamp: str, bucket: str = BUCKET_OUTPUT
) -> tuple[HandOff, TransferResult]:
    """Upload ``run_dir`` to the run's work prefix (identical objects skipped), drop what an earlier
    hand-off left there that the directory no longer holds, and write ``handoff.json`` last."""
    prefix = work_prefix(job_id, stamp)
    storage.delete_object(bucket, prefix + HANDOFF_NAME)  # until the new one is whole, no task reads it
    files = handed_files(run_dir)
    if not files:
        raise FileNotFoundError(f"run directory {run_dir} holds nothing to hand on")
    transfer = storage.upload_dir(run_dir, bucket, prefix, files=files)
    return seal_handoff(storage, job_id, stamp, transfer.checksums, transfer.bytes, bucket), transfer


def seal_handoff(
    storage: StorageHook,
    job_id: str,
    stamp: str,
    stored: dict[str, tuple[int, str, str | None]],
    sent_bytes: int,
    bucket: str = BUCKET_OUTPUT,
) -> HandOff:
    """Finish a hand-off whose files are all stored (relpath -> size, sha256, ETag): remove what the work
    prefix holds beyond them, then write ``handoff.json``, the step that makes the hand-off readable."""
    prefix = work_prefix(job_id, stamp)
    manifest = Manifest(job_id, stamp, [FileEntry(rel, *stored[rel]) for rel in sorted(stored)])
    keep = {prefix + entry.path for entry in manifest.files}
    for obj in storage.list_objects(bucket, prefix):
        if obj.key not in keep:
            storage.delete_object(bucket, obj.key)
    storage.put_bytes(bucket, prefix + HANDOFF_NAME, manifest.to_json().encode(), "application/json")
    return HandOff(bucket, prefix, len(manifest.files), manifest.total_bytes, sent_bytes)


def read_handoff(storage: StorageHook, job_id: str, stamp: str, bucket: str = BUCKET_OUTPUT) -> Manifest | None:
    """The run's hand-off manifest, or ``None`` when no task has handed the run off (completely). One that
    names another job or run (copied in from another prefix) is refused with RunMismatchError: its files
    are not this run's."""
    key = work_prefix(job_id, stamp) + HANDOFF_NAME
    try:
        raw = storage.get_bytes(bucket, key)
    except ObjectNotFoundError:
        return None
    manifest = Manifest.from_json(raw)
    if (manifest.job_id, manifest.stamp) != (job_id, stamp):
        raise RunMismatchError(
            f"{bucket}/{key} names job {manifest.job_id} run {manifest.stamp}, not job {job_id} run {stamp}: "
            "it is not this run's hand-off",
            found=manifest.stamp,
        )
    return manifest


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


def discard(storage: StorageHook, job_id: str, stamp: str, bucket: str = BUCKET_OUTPUT) -> int:
    """Remove a run's hand-off (every version: it is scratch), its manifest first."""
    prefix = work_prefix(job_id, stamp)
    storage.delete_object(bucket, prefix + HANDOFF_NAME)
    return storage.delete_prefix(bucket, prefix, all_versions=True)


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
