"""Retention: archived jobs leave ``output`` once they are old enough and safely archived."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from e2e3d_provider.core.layout import BUCKET_ARCHIVE, BUCKET_OUTPUT, SUCCESS_NAME, archive_prefix, output_prefix
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.publish import unpublish


def apply_retention(
    storage: StorageHook, metadata: MetadataHook, retention_days: float, now: datetime | None = None, limit: int = 1000
) -> dict[str, Any]:
    """Remove from ``output`` archived jobs finished more than ``retention_days`` ago, once their archive
    copy is complete (its SUCCESS exists). Each job is unpublished: SUCCESS first, then the rest."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=retention_days)
    removed, waiting = [], 0
    for job in metadata.list_jobs("archived", limit=limit):
        finished = job["finished_at"] or job["updated_at"]
        if finished is None or finished > cutoff:
            waiting += 1
            continue
        job_id = job["job_id"]
        if not storage.exists(BUCKET_ARCHIVE, archive_prefix(job_id, job["stamp"]) + SUCCESS_NAME):
            waiting += 1  # never delete what is not safely archived
            continue
        if not storage.list_keys(BUCKET_OUTPUT, output_prefix(job_id)):
            continue  # already removed: idempotent
        unpublish(storage, BUCKET_OUTPUT, output_prefix(job_id))
        metadata.record_job(
            job_id,
            job["stamp"],
            job["dataset"],
            "archived",
            statistics={"output_removed_at": now.isoformat(timespec="seconds")},
        )
        removed.append(job_id)
    return {"removed": len(removed), "waiting": waiting, "jobs": removed[:20]}
