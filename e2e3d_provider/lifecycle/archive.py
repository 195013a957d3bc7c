"""Archive: a completed job from ``output`` into ``archive``, verified against its manifest, then
recorded; and the maintenance sweep that archives every succeeded job."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from e2e3d_provider.core.layout import (
    BUCKET_ARCHIVE,
    BUCKET_OUTPUT,
    MANIFEST_NAME,
    SUCCESS_NAME,
    archive_prefix,
    output_prefix,
    validate_id,
)
from e2e3d_provider.exceptions import ChecksumMismatchError, ObjectNotFoundError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.publish import read_published_manifest, unpublish, verify_remote

log = logging.getLogger(__name__)


@dataclass
class ArchiveResult:
    """Where a job's run was archived and what it holds."""

    job_id: str
    stamp: str
    archive_bucket: str
    archive_key: str
    files: int
    bytes: int
    removed_source: bool

    @property
    def location(self) -> str:
        return f"{self.archive_bucket}/{self.archive_key}"

    def to_xcom(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "archive_key": self.archive_key,
            "archive_bucket": self.archive_bucket,
            "stamp": self.stamp,
            "files": self.files,
            "bytes": self.bytes,
        }


def archive_job(
    storage: StorageHook,
    job_id: str,
    *,
    source_bucket: str = BUCKET_OUTPUT,
    archive_bucket: str = BUCKET_ARCHIVE,
    remove_source: bool = False,
) -> ArchiveResult:
    """Server-side copy a completed job to ``archive/<job_id>/<job_id>_<stamp>/`` and verify it.

    The job must have SUCCESS and a manifest that its stored objects match. The archive copy gets
    its own SUCCESS last. With ``remove_source`` the job is unpublished from ``source_bucket``
    (SUCCESS first, then the rest), so no reader ever sees a marker over a partial set.
    """
    validate_id(job_id, "job_id")
    manifest = read_published_manifest(storage, source_bucket, job_id)
    source, target = output_prefix(job_id), archive_prefix(job_id, manifest.stamp)
    verify_remote(storage, source_bucket, source, manifest)  # never archive what does not match
    storage.copy_objects(source_bucket, archive_bucket, [(source + e.path, target + e.path) for e in manifest.files])
    verify_remote(storage, archive_bucket, target, manifest)
    for name in (MANIFEST_NAME, SUCCESS_NAME):  # the archive's own SUCCESS last
        storage.copy_objects(source_bucket, archive_bucket, [(source + name, target + name)])
    if remove_source:
        unpublish(storage, source_bucket, source)
    return ArchiveResult(
        job_id, manifest.stamp, archive_bucket, target, len(manifest.files), manifest.total_bytes, remove_source
    )


def record_archived(metadata: MetadataHook, result: ArchiveResult, dataset: str | None = None) -> bool:
    """Mark the archived run ``archived`` with its archive location; False if the run has no row."""
    if dataset is None:
        job = metadata.get_job(result.job_id, result.stamp)
        if job is None:
            log.warning(
                "job %s run %s is not in the metadata database; archive not recorded there", result.job_id, result.stamp
            )
            return False
        dataset = job["dataset"]
    metadata.record_job(result.job_id, result.stamp, dataset, "archived", archive_key=result.location)
    return True


def archive_and_record(
    storage: StorageHook,
    metadata: MetadataHook | None,
    job_id: str,
    *,
    source_bucket: str = BUCKET_OUTPUT,
    archive_bucket: str = BUCKET_ARCHIVE,
    remove_source: bool = False,
) -> ArchiveResult:
    """:func:`archive_job`, then (with a metadata hook) :func:`record_archived`."""
    result = archive_job(
        storage, job_id, source_bucket=source_bucket, archive_bucket=archive_bucket, remove_source=remove_source
    )
    if metadata is not None:
        record_archived(metadata, result)
    return result


def archive_completed(storage: StorageHook, metadata: MetadataHook, limit: int = 100) -> dict[str, Any]:
    """Archive succeeded jobs whose results are still complete in ``output``; record them archived.

    A job whose stored objects no longer match its manifest is not archived: it is reported under
    ``damaged`` (and logged) and the sweep goes on, so one damaged job never stops the others.
    """
    archived, skipped, damaged = [], [], []
    for job in metadata.list_jobs("succeeded", limit=limit):
        try:
            result = archive_job(storage, job["job_id"])
        except ObjectNotFoundError:
            skipped.append(job["job_id"])  # no SUCCESS (a newer run is publishing, or it was removed)
            continue
        except ChecksumMismatchError as err:
            damaged.append(job["job_id"])
            log.error("archive_completed: job %s not archived: %s", job["job_id"], err)
            continue
        if result.stamp != job["stamp"]:
            skipped.append(job["job_id"])  # output holds a newer run than this record
            continue
        record_archived(metadata, result, job["dataset"])
        archived.append(job["job_id"])
    return {"archived": len(archived), "skipped": len(skipped), "jobs": archived[:20], "damaged": damaged[:20]}
