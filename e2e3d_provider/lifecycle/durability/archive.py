"""Archive: a completed job from ``output`` into ``archive``, verified against its manifest, then
recorded; and the maintenance sweep that archives every succeeded job.

One job costs two GETs (marker and manifest), a HEAD of the target's SUCCESS, one server-side copy per
file pinned to the ETag the manifest recorded (``x-amz-copy-source-if-match``: the check and the copy are
one step, so no HEAD or listing of the source is needed), one listing of the copy checked against the
manifest, and two PUTs (manifest, then SUCCESS). The sweep runs jobs in parallel, oldest first, on one
PostgreSQL connection, until the backlog is empty or its time budget is spent.

Whoever holds the worker's keys can write anything in ``output``, the archive cannot be written by them and
is not versioned, and the next backup keeps what it holds as good. So the set in ``output`` is archived only
when its manifest names the run PostgreSQL records (never the stamp the manifest claims alone), and a target
prefix that holds a SUCCESS is never written again.
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
    validate_stamp,
)
from e2e3d_provider.core.manifest import Manifest
from e2e3d_provider.core.transfer import raise_failures, run_parallel
from e2e3d_provider.core.usage import UsageCounts, unit_of
from e2e3d_provider.core.xcom import ArchiveXCom
from e2e3d_provider.exceptions import ChecksumMismatchError, ManifestError, ObjectNotFoundError, RunMismatchError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.locks import job_lock
from e2e3d_provider.lifecycle.results.publish import copy_pinned, publish_subset, unpublish
from e2e3d_provider.lifecycle.results.published import Published, read_published, verify_remote

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

    def to_xcom(self) -> ArchiveXCom:
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
    stamp: str | None = None,
    source_bucket: str = BUCKET_OUTPUT,
    archive_bucket: str = BUCKET_ARCHIVE,
    remove_source: bool = False,
) -> ArchiveResult:
    """Server-side copy a completed job to ``archive/<job_id>/<job_id>_<stamp>/`` and verify it.

    The job must have SUCCESS and a manifest that its stored objects match. ``stamp`` is the run PostgreSQL
    records as the one to archive: a published set that names another run raises RunMismatchError (``found``:
    the run it names) before anything is copied. A target that already holds a SUCCESS is never written
    again: when its archived manifest has every file the published one lists, with the same sha256 (this
    run, archived before: a retried task), the job counts as archived; otherwise ChecksumMismatchError.
    The archive copy gets its own SUCCESS last. With ``remove_source`` the job is unpublished from
    ``source_bucket`` (SUCCESS first, then the rest), so no reader ever sees a marker over a partial set.
    """
    validate_id(job_id, "job_id")
    published = read_published(storage, source_bucket, job_id)
    manifest = published.manifest
    source = output_prefix(job_id)
    if stamp is not None and manifest.stamp != validate_stamp(stamp):
        raise RunMismatchError(
            f"{source_bucket}/{source} holds run {manifest.stamp} of job {job_id}, not the run PostgreSQL records "
            f"({stamp}); nothing was copied",
            found=manifest.stamp,
        )
    target = archive_prefix(job_id, manifest.stamp)
    if storage.exists(archive_bucket, target + SUCCESS_NAME):
        _archived_before(storage, archive_bucket, target, source_bucket, manifest)
        log.info(
            "%s: run %s is already archived at %s/%s; nothing rewritten", job_id, manifest.stamp, archive_bucket, target
        )
    else:
        _copy_verified(storage, published, source_bucket, source, archive_bucket, target)
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


def _copy_verified(
    storage: StorageHook, published: Published, source_bucket: str, source: str, archive_bucket: str, target: str
) -> None:
    """Copy every manifest file pinned to its recorded ETag, check the copy by one listing, then write the
    manifest and the archive's SUCCESS last."""
    manifest = published.manifest
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


def _archived_before(storage: StorageHook, bucket: str, target: str, source_bucket: str, manifest: Manifest) -> None:
    """Raise ChecksumMismatchError unless the complete archive copy at ``target`` is this run: the same stamp,
    and every file the published manifest lists with the same sha256 (a smaller published set, after the
    preservation policy removed files once archived, is the same run)."""
    try:
        archived = read_published(storage, bucket, manifest.job_id, target).manifest
    except (ChecksumMismatchError, ManifestError) as err:
        raise ChecksumMismatchError(
            f"{bucket}/{target} already holds a SUCCESS, which vouches for no readable manifest of this run ({err}); "
            "an archived run is never replaced: run e2e3d scrub"
        ) from err
    held = {entry.path: entry.sha256 for entry in archived.files}
    differs = [entry.path for entry in manifest.files if held.get(entry.path) != entry.sha256]
    if archived.stamp != manifest.stamp or differs:
        raise ChecksumMismatchError(
            f"{bucket}/{target} already holds run {archived.stamp} of job {manifest.job_id}, archived with its "
            f"SUCCESS, and {source_bucket}/{output_prefix(manifest.job_id)} differs from it "
            f"({', '.join(differs[:5]) or 'its stamp'}): an archived run is never replaced"
        )


def _recorded_etags(manifest: Manifest) -> dict[str, str | None]:
    return {entry.path: entry.etag for entry in manifest.files}


def record_archived(
    metadata: MetadataHook, result: ArchiveResult, dataset: str | None = None, usage: UsageCounts | None = None
) -> bool:
    """Mark the archived run ``archived`` with its archive location, and store ``usage`` (the units the
    archiving changed, freshly counted) in the same transaction; False if the run has no row."""
    if dataset is None:
        job = metadata.get_job(result.job_id, result.stamp)
        if job is None:
            log.warning(
                "job %s run %s is not in the metadata database; archive not recorded there", result.job_id, result.stamp
            )
            return False
        dataset = job["dataset"]
    metadata.record_job(result.job_id, result.stamp, dataset, "archived", archive_key=result.location, usage=usage)
    return True


def archive_and_record(
    storage: StorageHook,
    metadata: MetadataHook | None,
    job_id: str,
    *,
    stamp: str | None = None,
    source_bucket: str = BUCKET_OUTPUT,
    archive_bucket: str = BUCKET_ARCHIVE,
    remove_source: bool = False,
) -> ArchiveResult:
    """:func:`archive_job` under the job's lock (it may change what ``output`` holds), then (with a
    metadata hook) :func:`record_archived`. The run archived must be ``stamp``, by default (with a metadata
    hook) the job's latest run in PostgreSQL: a published set naming another run is never archived."""
    with job_lock(metadata, job_id):
        if stamp is None and metadata is not None:
            latest = metadata.get_job(job_id)
            stamp = latest["stamp"] if latest else None
        result = archive_job(
            storage,
            job_id,
            stamp=stamp,
            source_bucket=source_bucket,
            archive_bucket=archive_bucket,
            remove_source=remove_source,
        )
        usage = storage.recount_touched()  # the archive copy (and the output, when removed) under the lock
    if metadata is not None:
        recorded = record_archived(metadata, result, usage=usage)
        if recorded and remove_source:  # its output is gone on purpose: retention and the scrub skip it
            metadata.mark_output_removed([(result.job_id, result.stamp)], datetime.now(UTC))
    return result


class _Damaged(str):
    """Why one job of the sweep was not archived (the sweep goes on)."""


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

    A job is archived only when ``output`` holds the run PostgreSQL records (a newer run there: ``skipped``).
    A job whose set cannot be archived as it is (objects that no longer match its manifest, a malformed
    manifest or one of another job, a set claiming another run, an archive copy of the run that differs) is
    not archived: it is reported under ``damaged`` (and ``problems``, and logged) and the sweep goes on, so
    one bad job never stops the others. An error of the storage itself (unreachable, refused) stops the
    sweep once the jobs in flight are recorded.
    """
    started = time.monotonic()
    archived: list[str] = []
    skipped: list[str] = []
    damaged: dict[str, str] = {}
    failures: dict[str, BaseException] = {}
    looked_at, complete = 0, True

    counted: dict[str, UsageCounts] = {}

    def one(job: dict[str, Any]) -> tuple[dict[str, Any], ArchiveResult | str | BaseException]:
        try:
            result = archive_job(storage, job["job_id"], stamp=job["stamp"])
            unit = unit_of(archive_prefix(job["job_id"], job["stamp"]))
            counted[job["job_id"]] = storage.count_units(BUCKET_ARCHIVE, [unit])
            return job, result
        except ObjectNotFoundError:
            return job, "skipped"  # no SUCCESS (a newer run is publishing, or it was removed)
        except RunMismatchError as err:
            if err.found is not None and err.found > job["stamp"]:
                return job, "skipped"  # a newer run of the job owns the output
            return job, _Damaged(str(err))
        except (ChecksumMismatchError, ManifestError) as err:
            return job, _Damaged(str(err))
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
                    record_archived(metadata, outcome, job["dataset"], counted.pop(job["job_id"], None))
                    archived.append(job["job_id"])
                elif isinstance(outcome, ArchiveResult) or outcome == "skipped":
                    skipped.append(job["job_id"])  # output holds a newer run than this record
                elif isinstance(outcome, _Damaged):
                    log.error("archive_completed: job %s run %s not archived: %s", job["job_id"], job["stamp"], outcome)
                    damaged[job["job_id"]] = str(outcome)
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
    shown = list(damaged)[:20]
    return {
        "archived": len(archived),
        "skipped": len(skipped),
        "damaged": shown,
        "problems": {job_id: damaged[job_id][:500] for job_id in shown},
        "jobs": archived[:20],
        "seconds": round(seconds, 3),
        "complete": complete and not failures,
    }
