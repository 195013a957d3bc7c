"""Scheduled maintenance: temp clean-up, archiving, retention, statistics, health. Each idempotent."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from e2e3d_provider.exceptions import E2E3DError, ObjectNotFoundError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.layout import (
    BUCKET_ARCHIVE,
    BUCKET_OUTPUT,
    DEFAULT_BUCKETS,
    SUCCESS_NAME,
    archive_prefix,
    output_prefix,
    success_key,
)
from e2e3d_provider.operators.archive import archive_job
from e2e3d_provider.operators.local_paths import inside_root, remove_tree

#: configuration keys read from PostgreSQL (e2e3d.config) when a DAG param does not set the value
CONFIG_TEMP_MAX_AGE_HOURS = "temp_max_age_hours"
CONFIG_RETENTION_DAYS = "output_retention_days"
DEFAULTS = {CONFIG_TEMP_MAX_AGE_HOURS: 24, CONFIG_RETENTION_DAYS: 30}


def setting(metadata: MetadataHook, key: str, override: Any = None) -> float:
    """A DAG param if given, else the value in the configuration table, else the default."""
    if override not in (None, "", "None"):
        return float(override)
    return float(metadata.get_config(key, DEFAULTS[key]))


def clean_temp(root: Path, max_age_hours: float, now: float | None = None) -> dict[str, Any]:
    """Remove run temp dirs under ``<root>/temp`` not modified for ``max_age_hours``."""
    now = time.time() if now is None else now
    temp = root / "temp"
    removed, kept = [], 0
    for entry in sorted(temp.iterdir()) if temp.is_dir() else []:
        newest = max([entry.lstat().st_mtime] + [p.lstat().st_mtime for p in entry.rglob("*")])
        if now - newest >= max_age_hours * 3600:
            remove_tree(inside_root(entry, root))
            removed.append(entry.name)
        else:
            kept += 1
    return {"removed": len(removed), "kept": kept, "names": removed[:20]}


def archive_completed(storage: StorageHook, metadata: MetadataHook, limit: int = 100) -> dict[str, Any]:
    """Archive succeeded jobs whose results are still complete in ``output``; record them archived."""
    archived, skipped = [], []
    for job in metadata.list_jobs("succeeded", limit=limit):
        try:
            result = archive_job(storage, job["job_id"])
        except ObjectNotFoundError:
            skipped.append(job["job_id"])  # no SUCCESS (a newer run is publishing, or it was removed)
            continue
        if result.stamp != job["stamp"]:
            skipped.append(job["job_id"])  # output holds a newer run than this record
            continue
        metadata.record_job(job["job_id"], job["stamp"], job["dataset"], "archived",
                            archive_key=f"{result.archive_bucket}/{result.archive_key}")
        archived.append(job["job_id"])
    return {"archived": len(archived), "skipped": len(skipped), "jobs": archived[:20]}


def apply_retention(storage: StorageHook, metadata: MetadataHook, retention_days: float,
                    now: datetime | None = None, limit: int = 1000) -> dict[str, Any]:
    """Remove from ``output`` archived jobs finished more than ``retention_days`` ago, once their archive
    copy is complete (its SUCCESS exists). The output SUCCESS goes first, then the rest."""
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
        storage.delete_object(BUCKET_OUTPUT, success_key(job_id))
        storage.delete_prefix(BUCKET_OUTPUT, output_prefix(job_id))
        metadata.record_job(job_id, job["stamp"], job["dataset"], "archived",
                            statistics={"output_removed_at": now.isoformat(timespec="seconds")})
        removed.append(job_id)
    return {"removed": len(removed), "waiting": waiting, "jobs": removed[:20]}


def record_statistics(storage: StorageHook, metadata: MetadataHook,
                      buckets: tuple[str, ...] = DEFAULT_BUCKETS) -> dict[str, Any]:
    """Objects and bytes per bucket, and the last 24 h of transfer throughput, into PostgreSQL."""
    stats = [storage.statistics(bucket) for bucket in buckets if storage.bucket_exists(bucket)]
    metadata.record_storage_stats(stats)
    throughput = metadata.transfer_summary(since=datetime.now(UTC) - timedelta(hours=24))
    metadata.set_config("transfer_throughput_24h", {"taken_at": datetime.now(UTC).isoformat(timespec="seconds"),
                                                    **throughput})
    return {"buckets": {s["bucket"]: {"objects": s["objects"], "bytes": s["bytes"]} for s in stats},
            "throughput": throughput}


def check_health(storage: StorageHook, metadata: MetadataHook) -> dict[str, Any]:
    """Reachability of object storage and PostgreSQL; raises if either is down."""
    health = {"storage": storage.health(), "metadata": metadata.health()}
    if not (health["storage"]["ok"] and health["metadata"]["ok"]):
        raise E2E3DError(f"unhealthy: {health}")
    return {name: {"ok": part["ok"]} for name, part in health.items()}
