"""Archive: a completed job from ``output`` into ``archive``, verified against its manifest, then
recorded; and the maintenance sweep that archives every succeeded job.

One job costs two GETs (marker and manifest), one server-side copy per file pinned to the ETag the
manifest recorded (``x-amz-copy-source-if-match``: the check and the copy are one step, so no HEAD
or listing of the source is needed), one listing of the copy checked against the manifest, and two
PUTs (manifest, then SUCCESS). The sweep runs jobs in parallel, oldest first, on one PostgreSQL
connection, until the backlog is empty or its time budget is spent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
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
from e2e3d_provider.core.manifest import Manifest
from e2e3d_provider.core.transfer import raise_failures, run_parallel
from e2e3d_provider.exceptions import ChecksumMismatchError, ObjectNotFoundError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.locks import job_lock
from e2e3d_provider.lifecycle.publish import copy_pinned, publish_subset, read_published, unpublish, verify_remote

#: jobs archived at once by the maintenance sweep, and jobs read from PostgreSQL per page
ARCHIVE_WORKERS = 16
PAGE_SIZE = 200

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
    published = read_published(storage, source_bucket, job_id)
    manifest = published.manifest
    source, target = output_prefix(job_id), archive_prefix(job_id, manifest.stamp)
    try:
        copy_pinned(storage, manifest, source_bucket, source, archive_bucket, target, _recorded_etags(manifest))
    except ChecksumMismatchError:
        # an object's ETag is not the recorded one: name the file whose bytes differ (never archive
        # those); if the bytes are the published ones after all (stored again), copy them as they are now
        listed = {obj.key: obj for obj in storage.list_objects(source_bucket, source)}
        verify_remote(storage, source_bucket, source, manifest, listed=listed)
        pins = {e.path: listed[source + e.path].etag for e in manifest.files}
        copy_pinned(storage, manifest, source_bucket, source, archive_bucket, target, pins)
    verify_remote(storage, archive_bucket, target, manifest)  # one listing of the copy
    storage.put_bytes(archive_bucket, target + MANIFEST_NAME, published.manifest_bytes, "application/json")
    storage.put_bytes(archive_bucket, target + SUCCESS_NAME, published.marker_bytes, "application/json")  # last
    if remove_source:
        unpublish(storage, source_bucket, source)
    elif manifest.preservation.get("remove_after_archive"):  # the policy keeps these only in the archive
        note = {"after_archive": True, "archive_key": f"{archive_bucket}/{target}"}
        removed = publish_subset(
            storage, source_bucket, job_id, published, list(manifest.preservation["remove_after_archive"]), note
        )
        log.info("%s: removed %d files from %s after archive (preservation policy)", job_id, removed, source_bucket)
    return ArchiveResult(
        job_id, manifest.stamp, archive_bucket, target, len(manifest.files), manifest.total_bytes, remove_source
    )


def _recorded_etags(manifest: Manifest) -> dict[str, str | None]:
    return {entry.path: entry.etag for entry in manifest.files}


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
    """:func:`archive_job` under the job's lock (it may change what ``output`` holds), then (with a
    metadata hook) :func:`record_archived`."""
    with job_lock(metadata, job_id):
        result = archive_job(
            storage, job_id, source_bucket=source_bucket, archive_bucket=archive_bucket, remove_source=remove_source
        )
    if metadata is not None:
        recorded = record_archived(metadata, result)
        if recorded and remove_source:  # its output is gone on purpose: retention and the scrub skip it
            metadata.mark_output_removed([(result.job_id, result.stamp)], datetime.now(UTC))
    return result


def archive_completed(
    storage: StorageHook,
    metadata: MetadataHook,
    limit: int | None = None,
    *,
    time_budget: float | None = None,
    workers: int = ARCHIVE_WORKERS,
    page_size: int = PAGE_SIZE,
) -> dict[str, Any]:
    """Archive succeeded jobs whose results are still complete in ``output``, oldest first, ``workers``
    at a time; record them archived. Runs until no succeeded job is left (or ``limit`` jobs were looked
    at, or ``time_budget`` seconds passed: ``complete`` is then False and the next run goes on).

    A job whose stored objects no longer match its manifest is not archived: it is reported under
    ``damaged`` (and logged) and the sweep goes on, so one damaged job never stops the others. An
    error of the storage itself (unreachable, refused) stops the sweep once the jobs in flight are
    recorded.
    """
    started = time.monotonic()
    archived: list[str] = []
    skipped: list[str] = []
    damaged: list[str] = []
    failures: dict[str, BaseException] = {}
    looked_at, complete = 0, True

    def one(job: dict[str, Any]) -> tuple[dict[str, Any], ArchiveResult | str | BaseException]:
        try:
            return job, archive_job(storage, job["job_id"])
        except ObjectNotFoundError:
            return job, "skipped"  # no SUCCESS (a newer run is publishing, or it was removed)
        except ChecksumMismatchError as err:
            log.error("archive_completed: job %s not archived: %s", job["job_id"], err)
            return job, "damaged"
        except Exception as err:
            return job, err

    with metadata.session():
        after = None
        while not failures:
            size = page_size if limit is None else min(page_size, limit - looked_at)
            page = metadata.oldest_jobs("succeeded", after=after, limit=size) if size > 0 else []
            if not page:
                complete = limit is None or looked_at < limit
                break
            after = metadata.keyset(page[-1])
            looked_at += len(page)
            for job, outcome in run_parallel(page, one, workers, lambda job: job["job_id"], storage.translate):
                if isinstance(outcome, ArchiveResult) and outcome.stamp == job["stamp"]:
                    record_archived(metadata, outcome, job["dataset"])
                    archived.append(job["job_id"])
                elif isinstance(outcome, ArchiveResult) or outcome == "skipped":
                    skipped.append(job["job_id"])  # output holds a newer run than this record
                elif outcome == "damaged":
                    damaged.append(job["job_id"])
                else:
                    failures[job["job_id"]] = storage.translate(outcome, f"archive {job['job_id']}")
            if len(page) < size:
                break
            if time_budget is not None and time.monotonic() - started > time_budget:
                complete = False
                break
    seconds = time.monotonic() - started
    log.info(
        "archive_completed: %d archived, %d skipped, %d damaged in %.1fs (%.1f jobs/s)%s",
        len(archived),
        len(skipped),
        len(damaged),
        seconds,
        len(archived) / seconds if seconds else 0.0,
        "" if complete else "; more are waiting (the next run goes on)",
    )
    raise_failures(failures, looked_at)
    return {
        "archived": len(archived),
        "skipped": len(skipped),
        "damaged": damaged[:20],
        "jobs": archived[:20],
        "seconds": round(seconds, 3),
        "complete": complete and not failures,
    }
