"""The scheduled maintenance steps in one namespace (the maintenance DAG calls one per task):
thresholds, temp clean-up, reconciling jobs with their DAG runs, archiving, retention, reconciling the
kept storage figures with the server, statistics, health, scrub and storage hygiene. Each is idempotent."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from e2e3d_provider.core.layout import BUCKET_ARCHIVE, BUCKET_INPUT, BUCKET_OUTPUT, DEFAULT_BUCKETS
from e2e3d_provider.core.listing import COUNT_FIELDS
from e2e3d_provider.core.settings import default
from e2e3d_provider.exceptions import E2E3DError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.durability.archive import archive_completed as archive_completed
from e2e3d_provider.lifecycle.durability.retention import apply_retention as apply_retention
from e2e3d_provider.lifecycle.durability.scrub import scrub as scrub
from e2e3d_provider.lifecycle.maintenance.dashboard import dashboard_figures
from e2e3d_provider.lifecycle.maintenance.hygiene import (
    abort_stale_uploads,
    stray_objects,
    vacuum_metadata,
    vacuum_volumes,
)
from e2e3d_provider.lifecycle.maintenance.hygiene import (
    configured_vacuum as configured_vacuum,
)
from e2e3d_provider.lifecycle.maintenance.reconcile import reconcile_running_jobs as reconcile_running_jobs
from e2e3d_provider.lifecycle.maintenance.usage import reconcile_usage as reconcile_usage
from e2e3d_provider.lifecycle.worker.scratch import clean_temp as clean_temp

log = logging.getLogger(__name__)

#: configuration keys read from PostgreSQL (e2e3d.config) when a DAG param does not set the value
CONFIG_TEMP_MAX_AGE_HOURS = "temp_max_age_hours"
CONFIG_RETENTION_DAYS = "output_retention_days"
CONFIG_TELEMETRY_DAYS = "telemetry_retention_days"
CONFIG_SCRUB_MAX_BYTES = "scrub_max_bytes"
CONFIG_STRAY_GRACE_HOURS = "stray_grace_hours"
CONFIG_UPLOAD_MAX_AGE_HOURS = "multipart_max_age_hours"
CONFIG_RECONCILE_BUDGET_SECONDS = "usage_reconcile_budget_seconds"
#: their defaults, as declared (with their meaning and bounds) in e2e3d_provider.core.settings
DEFAULTS = {
    key: default(key)
    for key in (
        CONFIG_TEMP_MAX_AGE_HOURS,
        CONFIG_RETENTION_DAYS,
        CONFIG_TELEMETRY_DAYS,
        CONFIG_SCRUB_MAX_BYTES,
        CONFIG_STRAY_GRACE_HOURS,
        CONFIG_UPLOAD_MAX_AGE_HOURS,
        CONFIG_RECONCILE_BUDGET_SECONDS,
    )
}


def storage_hygiene(
    storage: StorageHook,
    metadata: MetadataHook,
    *,
    remove_strays: bool = False,
    vacuum: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The design's "defragmentation", each part reporting what it reclaimed: abort stale multipart uploads
    in the buckets this role writes, find (``remove_strays``: remove) objects no manifest names, VACUUM
    (ANALYZE) metadata tables with many dead rows, and compact the embedded stack's volumes (``vacuum``)."""
    age = timedelta(hours=setting(metadata, CONFIG_UPLOAD_MAX_AGE_HOURS))
    grace = timedelta(hours=setting(metadata, CONFIG_STRAY_GRACE_HOURS))
    return {
        "multipart": abort_stale_uploads(storage, age, (BUCKET_INPUT, BUCKET_OUTPUT, BUCKET_ARCHIVE)),
        "strays": stray_objects(storage, metadata, grace, dry_run=not remove_strays),
        "metadata": vacuum_metadata(metadata),
        "volumes": vacuum_volumes(vacuum),
    }


def setting(metadata: MetadataHook, key: str, override: float | None = None) -> float:
    """A DAG param if given, else the value in the configuration table, else the default."""
    if override is not None and override != "":
        return float(override)
    return float(metadata.get_config(key, DEFAULTS[key]))


def record_statistics(
    storage: StorageHook, metadata: MetadataHook, buckets: tuple[str, ...] = DEFAULT_BUCKETS
) -> dict[str, Any]:
    """A snapshot of the figures kept per bucket (objects and bytes, current and noncurrent versions apart:
    every write keeps them, the reconciliation corrects them) for the dashboard's growth series and fill
    projection, and the last 24 h of transfer throughput, into PostgreSQL. No listing: at a million
    objects a count of the buckets takes longer than the figures stay fresh (``bench/control_plane.py``)."""
    kept = {row["bucket"]: row for row in metadata.bucket_usage()}
    empty = dict.fromkeys(COUNT_FIELDS, 0)  # a bucket nothing was ever counted in holds nothing the provider knows
    stats = [
        {**empty, **kept.get(bucket, {}), "bucket": bucket, "prefix": ""}
        for bucket in buckets
        if bucket in kept or storage.bucket_exists(bucket)
    ]
    metadata.record_storage_stats(stats)
    throughput = metadata.transfer_summary(since=datetime.now(UTC) - timedelta(hours=24))
    metadata.set_config(
        "transfer_throughput_24h", {"taken_at": datetime.now(UTC).isoformat(timespec="seconds"), **throughput}
    )
    return {
        "buckets": {s["bucket"]: {k: s[k] for k in ("objects", "bytes", "versions", "stored_bytes")} for s in stats},
        "throughput": throughput,
    }


def check_health(storage: StorageHook, metadata: MetadataHook) -> dict[str, Any]:
    """Reachability of object storage and PostgreSQL (raises if either is down), and warnings when object
    storage or a worker's data root fills within two weeks at its current growth rate (logged, returned)."""
    health = {"storage": storage.health(), "metadata": metadata.health()}
    if not (health["storage"]["ok"] and health["metadata"]["ok"]):
        raise E2E3DError(f"unhealthy: {health}")
    result: dict[str, Any] = {name: {"ok": part["ok"]} for name, part in health.items()}
    try:
        result["warnings"] = dashboard_figures(metadata)["warnings"]
    except Exception as err:  # the projection is advice: it must never stop archiving or retention
        log.warning("health: the fill projections could not be computed: %s", err)
        result["warnings"] = []
    for warning in result["warnings"]:
        log.warning("health: %s", warning)
    return result


def trim_telemetry(metadata: MetadataHook, keep_days: float) -> dict[str, int]:
    """Drop access-log, error, worker-disk, transfer and storage-snapshot rows older than ``keep_days``."""
    return metadata.trim_telemetry(keep_days)
