"""Hand a run's files from task to task through object storage, so each task may run on any host.

A task that produces files (the reconstruction, right-sizing) ends by handing its run directory off to
``output/.work/<job_id>/<job_id>_<stamp>/``: every file uploaded (identical ones skipped), then a
``handoff.json`` naming each with size, sha256 and the ETag the server answered, written last. A task on
another host rebuilds the run directory from it (:mod:`e2e3d_provider.lifecycle.worker.rebuild`: each
file checked against ``handoff.json``; files already there move no bytes). Publishing copies the
hand-off server-side (:func:`e2e3d_provider.lifecycle.results.publish.publish_handoff`), and the work
prefix goes once the run is published. A hand-off without its ``handoff.json`` (a task that died
part-way) is never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from e2e3d_provider.core.layout import (
    BUCKET_OUTPUT,
    HANDOFF_NAME,
    VARIANTS_NAME,
    work_prefix,
)
from e2e3d_provider.core.manifest import FileEntry, Manifest, iter_run_files, refuse_links
from e2e3d_provider.core.transfer import TransferResult
from e2e3d_provider.core.xcom import HandOffXCom
from e2e3d_provider.exceptions import ObjectNotFoundError, RunMismatchError, UnsafePathError
from e2e3d_provider.hooks.storage import StorageHook


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

    def to_xcom(self) -> HandOffXCom:
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


def discard(storage: StorageHook, job_id: str, stamp: str, bucket: str = BUCKET_OUTPUT) -> int:
    """Remove a run's hand-off (every version: it is scratch), its manifest first."""
    prefix = work_prefix(job_id, stamp)
    storage.delete_object(bucket, prefix + HANDOFF_NAME)
    return storage.delete_prefix(bucket, prefix, all_versions=True)
