"""Retention: archived jobs leave ``output`` once they are old enough and safely archived.

The walk goes over archived runs oldest first, a page at a time (keyset pagination, so no run is
ever out of sight however many newer ones there are); it checks a page's runs in parallel, removes
their outputs with multi-object deletes (every SUCCESS marker of the page first, then the rest), and
records each run whose output is gone, so no later run looks at it again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from e2e3d_provider.core.layout import BUCKET_ARCHIVE, BUCKET_OUTPUT, SUCCESS_NAME, archive_prefix, output_prefix
from e2e3d_provider.core.marker import SuccessMarker
from e2e3d_provider.core.transfer import run_parallel
from e2e3d_provider.exceptions import ObjectNotFoundError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook

log = logging.getLogger(__name__)

#: archived runs looked at per page (one query, one round of parallel checks, a few batch deletes)
PAGE_SIZE = 500
#: runs checked at once (a HEAD in ``archive`` and a LIST in ``output`` each)
CHECK_WORKERS = 16


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
    keys: tuple[str, ...] = ()


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
    copy is complete (its SUCCESS exists) and which still owns its job's output; returns the
    :class:`RetentionResult` as a dict. With ``time_budget`` (seconds) the walk stops after the page in
    which it ran out (``complete`` is then False; the next run goes on where the work is)."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=retention_days)
    started = time.monotonic()
    result = RetentionResult()
    with metadata.session():
        after = None
        while True:
            page = metadata.oldest_jobs(
                "archived", finished_before=cutoff, after=after, output_present=True, limit=page_size
            )
            if not page:
                break
            after = metadata.keyset(page[-1])
            _retire_page(storage, metadata, page, now, result)
            if len(page) < page_size:
                break
            if time_budget is not None and time.monotonic() - started > time_budget:
                result.complete = False
                break
    result.seconds = time.monotonic() - started
    log.info(
        "retention (%s days): %d runs removed from output (%d objects), %d already gone, %d waiting for "
        "their archive, in %.1fs%s",
        retention_days,
        result.removed,
        result.objects_deleted,
        result.already_gone,
        result.waiting,
        result.seconds,
        "" if result.complete else " (time budget spent: the next run goes on)",
    )
    return result.to_xcom()


def _retire_page(
    storage: StorageHook, metadata: MetadataHook, page: list[dict[str, Any]], now: datetime, result: RetentionResult
) -> None:
    latest = metadata.latest_stamps({job["job_id"] for job in page})
    verdicts = run_parallel(
        page,
        lambda job: _judge(storage, job, latest.get(job["job_id"])),
        CHECK_WORKERS,
        lambda job: f"{job['job_id']}/{job['stamp']}",
        storage.translate,
    )
    doomed = [v for v in verdicts if v.action == "remove"]
    markers = [output_prefix(v.job["job_id"]) + SUCCESS_NAME for v in doomed]
    storage.delete_keys(BUCKET_OUTPUT, markers)  # from here on, no reader trusts these sets
    marked = set(markers)
    rest = [key for v in doomed for key in v.keys if key not in marked]  # a result file named SUCCESS goes too
    storage.delete_keys(BUCKET_OUTPUT, rest)
    gone = [v for v in verdicts if v.action == "gone"]
    metadata.mark_output_removed(
        [(v.job["job_id"], v.job["stamp"]) for v in doomed + gone], now, usage=storage.recount_touched()
    )
    result.removed += len(doomed)
    result.objects_deleted += len(rest) + len(markers)
    result.already_gone += len(gone)
    result.waiting += sum(1 for v in verdicts if v.action == "wait")
    result.jobs.extend(v.job["job_id"] for v in doomed)


def _judge(storage: StorageHook, job: dict[str, Any], latest_stamp: str | None) -> _Verdict:
    """What to do with one archived run: ``gone`` when a newer run of the job owns the output (or
    nothing is there); ``wait`` unless its archive is complete; else ``remove`` with the keys to delete.
    Two requests: a HEAD of the archive's SUCCESS and a LIST of the output; the output's marker is the
    archived run's when both markers have the same ETag (a marker's bytes name its run), and is read
    only when they differ."""
    job_id, stamp = job["job_id"], job["stamp"]
    if latest_stamp is not None and latest_stamp != stamp:
        return _Verdict(job, "gone")  # output/<job_id>/ belongs to a newer run now
    archived = storage.stat(BUCKET_ARCHIVE, archive_prefix(job_id, stamp) + SUCCESS_NAME)
    if archived is None:
        return _Verdict(job, "wait")  # never delete what is not safely archived
    listed = {obj.key: obj for obj in storage.list_objects(BUCKET_OUTPUT, output_prefix(job_id))}
    if not listed:
        return _Verdict(job, "gone")
    marker = listed.get(output_prefix(job_id) + SUCCESS_NAME)
    if marker is not None and marker.etag != archived.etag and _marker_stamp(storage, marker.key) not in (None, stamp):
        return _Verdict(job, "gone")  # published by a run the database does not know: leave it alone
    return _Verdict(job, "remove", tuple(listed))


def _marker_stamp(storage: StorageHook, key: str) -> str | None:
    try:  # a body no publish wrote names no stamp: the database's word (this is the latest run) stands
        return SuccessMarker.parse(storage.get_bytes(BUCKET_OUTPUT, key, max_bytes=64 * 1024)).stamp
    except ObjectNotFoundError:
        return None
