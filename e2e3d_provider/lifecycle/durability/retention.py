"""Retention: archived jobs leave ``output`` once they are old enough and safely archived.

The walk goes over archived runs oldest first, a page at a time (keyset pagination, so no run is ever out
of sight however many newer ones there are). PostgreSQL decides which runs are candidates, one query a
page (:meth:`~e2e3d_provider.hooks.metadata.MetadataHook.retention_candidates`): archived, finished before
the cutoff, output not yet recorded removed; a run with a newer run of its job is only recorded as gone
(``output/<job_id>/`` is the newer run's), without a request. Each other run costs two requests, many runs
in flight: a HEAD of its archive copy's SUCCESS and one version listing of ``output/<job_id>/`` (a GET of
the output's marker only when the two markers differ). The page's sets are then deleted version by
version across jobs (every SUCCESS version of the page first, then the rest): multi-object deletes, or one
request a version many in flight on SeaweedFS, where that is the fast way (StorageHook.delete_versions),
and each run whose set is gone is recorded with its emptied unit's zero usage in one transaction. While a
page is deleted and recorded, the next page is already being checked.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from e2e3d_provider.core.layout import BUCKET_ARCHIVE, BUCKET_OUTPUT, SUCCESS_NAME, archive_prefix, output_prefix
from e2e3d_provider.core.listing import Version
from e2e3d_provider.core.marker import SuccessMarker
from e2e3d_provider.core.transfer import run_parallel
from e2e3d_provider.core.usage import UsageCounts, zero
from e2e3d_provider.exceptions import ObjectNotFoundError, StorageError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook

log = logging.getLogger(__name__)

#: archived runs looked at per page (one query, one round of parallel checks, a few batch deletes)
PAGE_SIZE = 500
#: runs checked at once (a HEAD in ``archive`` and a version listing in ``output`` each)
CHECK_WORKERS = 16
#: multi-object delete requests (1,000 versions each) in flight at once (SeaweedFS: single deletes instead,
#: storage.SINGLE_DELETES_IN_FLIGHT of them)
DELETE_WORKERS = 8


@dataclass
class RetentionResult:
    """What one retention run did."""

    removed: int = 0
    objects_deleted: int = 0
    waiting: int = 0
    already_gone: int = 0
    seconds: float = 0.0
    complete: bool = True
    jobs: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # job_id -> what the server refused
    waited: dict[str, float] = field(default_factory=dict)  # seconds the walk spent on each step (log only)

    def timed(self, step: str, since: float) -> float:
        now = time.monotonic()
        self.waited[step] = self.waited.get(step, 0.0) + now - since
        return now

    def to_xcom(self) -> dict[str, Any]:
        return {
            "removed": self.removed,
            "objects_deleted": self.objects_deleted,
            "waiting": self.waiting,
            "already_gone": self.already_gone,
            "seconds": round(self.seconds, 3),
            "complete": self.complete,
            "jobs": self.jobs[:20],
        }


@dataclass(frozen=True)
class _Verdict:
    job: dict[str, Any]
    action: str  # "remove", "gone" (nothing of this run in output) or "wait" (not safely archived)
    versions: tuple[Version, ...] = ()  # every version and delete marker of output/<job_id>/ (remove)
    listed_at: datetime | None = None  # when that listing started: what its zero usage is counted at


def apply_retention(
    storage: StorageHook,
    metadata: MetadataHook,
    retention_days: float,
    now: datetime | None = None,
    *,
    page_size: int = PAGE_SIZE,
    time_budget: float | None = None,
) -> dict[str, Any]:
    """Remove from ``output`` every archived run finished more than ``retention_days`` ago whose archive
    copy is complete (its SUCCESS exists) and which still owns its job's output: every stored version and
    delete marker of ``output/<job_id>/``, so the unit is empty. Returns the :class:`RetentionResult` as
    a dict. With ``time_budget`` (seconds) the walk stops after the page in which it ran out (``complete``
    is then False; the next run goes on where the work is). A run whose set the server would not delete
    whole is left recorded as present (the next run tries again), its unit recounted; the walk finishes
    and then raises :class:`StorageError` naming those runs."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=retention_days)
    started = time.monotonic()
    result = RetentionResult()
    with metadata.session(), ThreadPoolExecutor(1, thread_name_prefix="e2e3d-retention") as ahead:
        page = metadata.retention_candidates(cutoff, limit=page_size)
        checking = ahead.submit(_check_page, storage, page) if page else None
        while checking is not None:
            mark = time.monotonic()
            verdicts = checking.result()
            result.timed("checks", mark)
            checking = None
            more = len(page) == page_size
            if more and time_budget is not None and time.monotonic() - started > time_budget:
                result.complete = False
                more = False
            if more:  # the next page is checked while this one is deleted and recorded
                page = metadata.retention_candidates(cutoff, after=metadata.keyset(page[-1]), limit=page_size)
                checking = ahead.submit(_check_page, storage, page) if page else None
            _retire(storage, metadata, verdicts, now, result)
    result.seconds = time.monotonic() - started
    log.info(
        "retention (%s days): %d runs removed from output (%d objects), %d already gone, %d waiting for "
        "their archive, in %.1fs%s (seconds waited: %s)",
        retention_days,
        result.removed,
        result.objects_deleted,
        result.already_gone,
        result.waiting,
        result.seconds,
        "" if result.complete else " (time budget spent: the next run goes on)",
        ", ".join(f"{step} {seconds:.1f}" for step, seconds in result.waited.items()),
    )
    if result.failed:
        raise StorageError(
            f"retention could not delete the whole output of {len(result.failed)} run(s) (left recorded as "
            "present, retried by the next run): "
            + "; ".join(f"{job_id}: {why}" for job_id, why in list(result.failed.items())[:5])
        )
    return result.to_xcom()


def _check_page(storage: StorageHook, page: list[dict[str, Any]]) -> list[_Verdict]:
    """The verdict on each run of a page: a superseded run is gone without a request; the others are
    judged in parallel (:func:`_judge`)."""
    verdicts = [_Verdict(job, "gone") for job in page if job["superseded"]]
    return verdicts + run_parallel(
        [job for job in page if not job["superseded"]],
        lambda job: _judge(storage, job),
        CHECK_WORKERS,
        lambda job: f"{job['job_id']}/{job['stamp']}",
        storage.translate,
    )


def _judge(storage: StorageHook, job: dict[str, Any]) -> _Verdict:
    """What to do with the latest archived run of a job: ``wait`` unless its archive copy is complete;
    ``gone`` when nothing is in ``output/<job_id>/`` or a run the database does not know published there;
    else ``remove`` with every version and delete marker listed.

    The archive's SUCCESS is asked for (a HEAD) every time, not taken from the ``archived`` status: the
    status says the copy was complete when it was recorded, the HEAD that it still is (a copy whose marker
    went, or a bucket restored from an older backup, must keep the output). Its ETag also names the run
    (a marker's bytes name its run): when the output's current SUCCESS has the same ETag it is this run's,
    and only when they differ is the output's marker read, to tell a foreign run's from a republish of this
    one. One version listing gives the output's current SUCCESS ETag and everything deleting the set needs."""
    job_id, stamp = job["job_id"], job["stamp"]
    archived = storage.stat(BUCKET_ARCHIVE, archive_prefix(job_id, stamp) + SUCCESS_NAME)
    if archived is None:
        return _Verdict(job, "wait")  # never delete what is not safely archived
    listed_at = datetime.now(UTC)
    prefix = output_prefix(job_id)
    versions = storage.list_versions(BUCKET_OUTPUT, prefix)
    if not versions:
        return _Verdict(job, "gone")
    marker = next((v for v in versions if v.key == prefix + SUCCESS_NAME and v.latest and not v.delete_marker), None)
    if (
        marker is not None
        and marker.etag != (archived.etag or "").lower()
        and _marker_stamp(storage, marker) not in (None, stamp)
    ):
        return _Verdict(job, "gone")  # published by a run the database does not know: leave it alone
    return _Verdict(job, "remove", tuple(versions), listed_at)


def _marker_stamp(storage: StorageHook, marker: Version) -> str | None:
    try:  # a body no publish wrote names no stamp: the database's word (this is the latest run) stands
        body = storage.get_bytes(BUCKET_OUTPUT, marker.key, max_bytes=64 * 1024, version_id=marker.version_id)
        return SuccessMarker.parse(body).stamp
    except ObjectNotFoundError:
        return None


def _retire(
    storage: StorageHook, metadata: MetadataHook, verdicts: list[_Verdict], now: datetime, result: RetentionResult
) -> None:
    """Delete the page's doomed sets and record the page: every SUCCESS version first, across jobs (from
    here on no reader trusts these sets), then the rest of the sets whose markers all went. A set whose
    every version went is an empty unit: zero usage, stored with the record of its removal and forgotten by
    the hook (no recount listing). Its count is dated at the start of the page's earliest listing, before
    that set was listed: a writer that put something there since and stored its own count keeps it. A set
    the server refused part of is recounted, and not recorded removed."""
    doomed = [v for v in verdicts if v.action == "remove"]
    markers = [
        (entry.key, entry.version_id)
        for v in doomed
        for entry in _oldest_first(v.versions)
        if entry.key == output_prefix(v.job["job_id"]) + SUCCESS_NAME
    ]
    mark = time.monotonic()
    refused = storage.delete_versions(BUCKET_OUTPUT, markers, parallel=DELETE_WORKERS)
    mark = result.timed("marker deletes", mark)
    failed = {key.split("/", 1)[0]: f"{key}: {code}" for key, _, code in refused}
    rest = [
        (entry.key, entry.version_id)
        for v in doomed
        if v.job["job_id"] not in failed
        for entry in _oldest_first(v.versions)
        if entry.key != output_prefix(v.job["job_id"]) + SUCCESS_NAME
    ]
    refused += storage.delete_versions(BUCKET_OUTPUT, rest, parallel=DELETE_WORKERS)
    mark = result.timed("deletes", mark)
    failed |= {key.split("/", 1)[0]: f"{key}: {code}" for key, _, code in refused if key.split("/", 1)[0] not in failed}

    emptied = [v for v in doomed if v.job["job_id"] not in failed]
    usage = UsageCounts()
    if emptied:
        usage.counted_at = min(v.listed_at or usage.counted_at for v in emptied)
        for v in emptied:
            usage.add(BUCKET_OUTPUT, output_prefix(v.job["job_id"]), zero())
        storage.forget_touched(BUCKET_OUTPUT, usage.units[BUCKET_OUTPUT])
    if failed:
        recounted = storage.count_units(BUCKET_OUTPUT, [output_prefix(job_id) for job_id in failed])
        usage = usage.merge(recounted) if emptied else recounted
    gone = [v for v in verdicts if v.action == "gone"]
    metadata.mark_output_removed([(v.job["job_id"], v.job["stamp"]) for v in emptied + gone], now, usage=usage)
    result.timed("records", mark)
    result.removed += len(emptied)
    result.objects_deleted += len(markers) + len(rest) - len(refused)
    result.already_gone += len(gone)
    result.waiting += sum(1 for v in verdicts if v.action == "wait")
    result.jobs.extend(v.job["job_id"] for v in emptied)
    result.failed |= failed


def _oldest_first(versions: tuple[Version, ...]) -> list[Version]:
    """A set's versions with each key's current one last (a listing gives it first): deleting the older
    ones first, the server never has to find a new current version of a key that is going whole."""
    return sorted(versions, key=lambda v: v.latest)
