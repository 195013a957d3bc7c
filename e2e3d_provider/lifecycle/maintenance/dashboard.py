"""The storage dashboard's figures: space per bucket and per worker disk with fill projections, throughput,
cache hit ratio, errors, top downloads, requests by hour, jobs. One function serves the dashboard page,
``e2e3d stats`` and the health check's warnings."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from e2e3d_provider.core.projection import MIN_SPAN, project
from e2e3d_provider.hooks.metadata import MetadataHook

#: e2e3d.config key: the object store's capacity in bytes (buckets are projected against it when set)
CONFIG_STORAGE_CAPACITY = "storage_capacity_bytes"
#: a projected fill within this many days is a health warning
WARN_DAYS = 14.0
#: the dashboard's job list: the most recently updated runs
RECENT_JOBS = 25
#: statuses whose results the results API serves
SERVED = ("succeeded", "archived")


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds")


def dashboard_figures(metadata: MetadataHook, days: float = 30.0) -> dict[str, Any]:
    """Every figure of the dashboard, JSON-safe, from PostgreSQL (what the maintenance DAG, the transfers,
    the API's access log, the storage errors and the workers' sweeps recorded)."""
    rows = metadata.dashboard_rows(days)
    capacity_value = metadata.get_config(CONFIG_STORAGE_CAPACITY, None)
    capacity = int(capacity_value) if capacity_value else None
    warnings: list[str] = []

    space: dict[str, dict[str, Any]] = {}
    for bucket, when, objects, nbytes in rows["space"]:
        series = space.setdefault(bucket, {"at": [], "bytes": [], "objects": []})
        series["at"].append(_iso(when))
        series["bytes"].append(int(nbytes))
        series["objects"].append(int(objects))
    total_samples: dict[datetime, int] = defaultdict(int)
    for _bucket, when, _objects, nbytes in rows["space"]:
        total_samples[when.replace(second=0, microsecond=0)] += int(nbytes)
    for series in space.values():
        samples = [(datetime.fromisoformat(t), b) for t, b in zip(series["at"], series["bytes"], strict=True)]
        p = project(samples, None)
        series["bytes_per_day"] = round(p.bytes_per_day)
    store = project(sorted(total_samples.items()), capacity)
    storage = {
        "capacity": capacity,
        "bytes": store.latest_bytes,
        "bytes_per_day": round(store.bytes_per_day),
        "full_at": _iso(store.full_at) if store.full_at else None,
        "days_left": None if store.days_left is None else round(store.days_left, 1),
    }
    if store.days_left is not None and store.days_left < WARN_DAYS:
        warnings.append(f"object storage fills in {store.days_left:.1f} days at the current growth rate")

    disks: dict[str, dict[str, Any]] = {}
    for host, when, total, used, cache in rows["disks"]:
        series = disks.setdefault(host, {"at": [], "used": [], "cache": [], "total": int(total)})
        series["at"].append(_iso(when))
        series["used"].append(int(used))
        series["cache"].append(int(cache))
        series["total"] = int(total)
    for host, series in disks.items():
        samples = [(datetime.fromisoformat(t), u) for t, u in zip(series["at"], series["used"], strict=True)]
        p = project(samples, series["total"])
        series["bytes_per_day"] = round(p.bytes_per_day)
        series["full_at"] = _iso(p.full_at) if p.full_at else None
        series["days_left"] = None if p.days_left is None else round(p.days_left, 1)
        if p.days_left is not None and p.days_left < WARN_DAYS:
            warnings.append(f"worker {host}'s data root fills in {p.days_left:.1f} days at the current growth rate")

    throughput: dict[str, dict[str, list[Any]]] = {}
    moved = skipped = 0
    for hour, direction, nbytes, seconds, skipped_bytes in rows["throughput"]:
        series = throughput.setdefault(direction, {"at": [], "mb_per_s": [], "bytes": []})
        series["at"].append(_iso(hour))
        series["bytes"].append(int(nbytes or 0))
        series["mb_per_s"].append(round(int(nbytes or 0) / 1e6 / float(seconds), 3) if seconds else 0.0)
        if direction == "download":
            moved += int(nbytes or 0)
            skipped += int(skipped_bytes or 0)
    requested = moved + skipped
    errors = error_series(rows["errors"])
    by_hour = [0] * 24
    for hour, count in rows["by_hour"]:
        by_hour[int(hour)] = int(count)
    return {
        "days": days,
        "space": space,
        "storage": storage,
        "disks": disks,
        "throughput": throughput,
        "cache": {
            "requested_bytes": requested,
            "skipped_bytes": skipped,
            "hit_ratio": round(skipped / requested, 4) if requested else None,
        },
        "errors": errors,
        "top_jobs": [{"job_id": j, "downloads": int(n)} for j, n in rows["top_jobs"]],
        "top_datasets": [{"dataset": d, "downloads": int(n)} for d, n in rows["top_datasets"]],
        "requests_by_hour": by_hour,
        "jobs": [
            {
                "status": status,
                "jobs": int(n),
                "mean_seconds": None if mean is None else round(float(mean), 1),
                "max_seconds": None if longest is None else round(float(longest), 1),
            }
            for status, n, mean, longest in rows["jobs"]
        ],
        "recent_jobs": [_job(j) for j in metadata.list_jobs(limit=RECENT_JOBS)],
        "usage": usage_figures(metadata),
        # a projection (growth per day, fill date) needs samples spanning this long
        "projection_min_hours": MIN_SPAN.total_seconds() / 3600,
        "warnings": warnings,
    }


def usage_figures(metadata: MetadataHook, now: datetime | None = None) -> dict[str, dict[str, Any]]:
    """Per bucket: the kept figures (what every write keeps) and how old the last complete reconciliation
    with the server is (``reconciled_hours_ago``; None: never), its method and the drift it found and
    corrected (``units``, stored object versions and stored bytes, server minus kept)."""
    now = now or datetime.now(UTC)
    figures = {}
    for row in metadata.bucket_usage():
        at = row["reconciled_at"]
        figures[row["bucket"]] = {
            **{name: row[name] for name in ("objects", "bytes", "versions", "stored_bytes", "delete_markers")},
            "updated_at": _iso(row["updated_at"]),
            "reconciled_at": _iso(at) if at else None,
            "reconciled_hours_ago": round((now - at).total_seconds() / 3600, 2) if at else None,
            "reconciled_by": row["reconciled_by"],
            "drift": row["drift"],
        }
    return figures


def _job(job: dict[str, Any]) -> dict[str, Any]:
    """One run of the job list: its status, times, size, and where its results are served (or why not)."""
    started, finished = job.get("started_at"), job.get("finished_at")
    return {
        "job_id": job["job_id"],
        "stamp": job["stamp"],
        "dataset": job["dataset"],
        "status": job["status"],
        "started_at": _iso(started) if started else None,
        "finished_at": _iso(finished) if finished else None,
        "seconds": round((finished - started).total_seconds(), 1) if started and finished else None,
        "files": job.get("files"),
        "bytes": job.get("bytes"),
        "error": (job.get("error") or "")[:300] or None,
        # relative to the dashboard page (both under the plugin's /e2e3d)
        "results": f"api/v1/jobs/{job['job_id']}/results" if job["status"] in SERVED else None,
    }


#: operations the error chart shows one by one; the rest are one series, so the chart stays readable
MAX_ERROR_SERIES = 6


def error_series(rows: list[tuple[Any, str, int]]) -> dict[str, dict[str, list[Any]]]:
    """Storage errors per hour by operation, from ``(hour, operation, count)`` rows: the
    :data:`MAX_ERROR_SERIES` operations with the most errors one series each, every other operation summed
    into one ``other (N operations)`` series (a chart with a legend entry per kind of failure, not per key)."""
    totals: dict[str, int] = {}
    for _, operation, count in rows:
        totals[operation] = totals.get(operation, 0) + int(count)
    ranked = sorted(totals, key=lambda op: (-totals[op], op))
    shown = set(ranked[:MAX_ERROR_SERIES]) if len(ranked) > MAX_ERROR_SERIES + 1 else set(ranked)
    rest = f"other ({len(ranked) - len(shown)} operations)"
    per_hour: dict[str, dict[Any, int]] = {}
    for hour, operation, count in rows:
        name = operation if operation in shown else rest
        hours = per_hour.setdefault(name, {})
        hours[hour] = hours.get(hour, 0) + int(count)
    return {
        name: {"at": [_iso(hour) for hour in sorted(hours)], "errors": [hours[hour] for hour in sorted(hours)]}
        for name, hours in per_hour.items()
    }
