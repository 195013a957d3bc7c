"""Usage reconciliation: the kept storage figures (``e2e3d.usage``, summed per bucket by trigger) compared
with what the server holds, now and then, and the drift it finds corrected and recorded.

The kept figures follow every write the provider makes; they miss what happens outside it (a raw put or
delete with other tools, a server's lifecycle expiring noncurrent versions, a writer that died between
its change and its count). Two ways to find that:

* **usage API** (MinIO): the admin data-usage report (``admin:DataUsageInfo``, granted to the maintenance
  role) gives per bucket what MinIO's background scanner counted, saved at ``lastUpdate``. In MinIO
  RELEASE.2024-01-01 (the test build) ``size`` is the bytes of every stored version (the kept
  ``stored_bytes``); ``objectsCount`` the object names with a version (a name whose latest version is a
  delete marker too, so not the kept ``objects`` on a versioned bucket; folder objects ``a/`` too);
  ``versionsCount`` the versions *and* delete markers of versioned objects (0 on a bucket that never had
  versioning: null versions are not counted); ``deleteMarkersCount`` the delete markers, except on a
  name that holds nothing else. So on a versioned bucket ``versions`` (versionsCount - deleteMarkersCount)
  and ``stored_bytes`` are compared; on an unversioned one ``objects`` = ``versions`` = objectsCount and
  ``bytes`` = ``stored_bytes`` = size. The report is the scanner's, not live: it is compared only when
  the kept figures have not changed since the scan (``bucket_usage.updated_at < lastUpdate``), else the
  bucket is "not comparable: writes since the server's last scan". Drift found this way is per bucket:
  ``method="usage-api"`` stores it in the bucket's unattributed unit ``""`` (the sums are right at once)
  for a listing to attribute; ``auto`` only reports it and lists the bucket, since a report saved after the
  last write can still miss writes its scan had not reached (seen in ``bench/control_plane.py``). The
  scanner runs its cycle every minute at MinIO's default speed
  (``MINIO_SCANNER_SPEED=fastest``: every second, which the tests use on their own stack).
* **listing** (any S3 server; SeaweedFS has nothing else: ``weed shell``'s ``s3.bucket.list`` and
  ``collection.list`` give a bucket's volume sizes, garbage included, and ``fs.du`` a filer folder's
  file count and bytes, none of it over the S3 API and none counting versions and delete markers as S3
  does): the bucket is walked in key ranges side by side (split at its top-level names, as a count is),
  version listings (plain ones on a bucket that never had versioning), one page at a time; entries are
  folded into per-unit totals in key order (a unit's keys are contiguous), and each batch of completed
  units is compared with the stored ones of the same name interval, so a stored unit the server no
  longer holds is found too (and zeroed). A unit whose stored count is later than the listing that saw
  it is left alone (a writer counted it meanwhile). With a time budget each range stops at a unit
  boundary once the budget is spent (after at least one unit, so every run progresses) and its position
  is kept in ``e2e3d.reconcile_cursors``; the next run resumes there, and the cycle is complete when
  every range is done (then the unattributed unit is zeroed: the listing attributed it all). Memory is
  bounded: a page, a batch of units and at most :data:`MAX_PENDING` corrections per range at a time.

``method="auto"`` (the maintenance DAG's): a bucket whose listing cycle is under way continues it;
otherwise the usage API is asked when the server has one, and when it is comparable, finds nothing and
nothing unattributed is stored, the bucket is done; when it finds drift (reported, not stored), is not
comparable, or the server has no usage API, the bucket is reconciled by listing, within the time
budget (buckets after the budget is spent are left for the next run, but the first listing of a run
always walks a unit per range at least, so every run progresses).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from e2e3d_provider.core.layout import DEFAULT_BUCKETS
from e2e3d_provider.core.listing import COUNT_FIELDS
from e2e3d_provider.core.usage import UNATTRIBUTED, UsageCounts, unit_of, zero
from e2e3d_provider.exceptions import StorageError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import COUNT_PARTITIONS, StorageHook

log = logging.getLogger(__name__)

METHODS = ("auto", "usage-api", "listing")
#: completed units compared with the stored ones per query
BATCH_UNITS = 500
#: corrections a range walker holds before it stores them (one transaction per batch group after that)
MAX_PENDING = 5_000
#: what the server's usage report is compared on, by whether the bucket has had versioning
API_FIELDS = {True: ("versions", "stored_bytes"), False: COUNT_FIELDS}

#: called with (bucket, units) when a batch of listed units is about to be compared (tests, tracing)
BatchHook = Callable[[str, Sequence[str]], None]


def reconcile_usage(
    storage: StorageHook,
    metadata: MetadataHook,
    buckets: Iterable[str] = DEFAULT_BUCKETS,
    *,
    method: str = "auto",
    time_budget: float | None = None,
    workers: int = COUNT_PARTITIONS,
    on_batch: BatchHook | None = None,
) -> dict[str, Any]:
    """Compare the kept figures of each bucket with the server and correct the drift (see the module's
    docstring for the two methods and ``auto``); record each comparison in ``e2e3d.reconciliations``.
    ``time_budget`` (seconds, shared by the buckets) bounds the listings, which resume at the next run;
    ``workers`` key ranges are listed side by side. Returns a JSON-safe summary per bucket."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: one of {', '.join(METHODS)}")
    deadline = None if time_budget is None else time.monotonic() + max(0.0, float(time_budget))
    kept = {row["bucket"]: row for row in metadata.bucket_usage()}
    report: dict[str, Any] | None = None
    report_error: str | None = None
    if method in ("auto", "usage-api"):
        try:
            report = storage.data_usage()
        except StorageError as err:
            if method == "usage-api":
                raise
            report_error = str(err)
        if report is None and method == "usage-api":
            raise StorageError(f"{storage.endpoint_url} offers no usage API (MinIO's admin data usage)")
    summary: dict[str, Any] = {}
    listed_any = False
    for bucket in buckets:
        result: dict[str, Any] = {}
        walking = bool(metadata.reconcile_cursors(bucket)) if method == "auto" else False
        if method == "usage-api" or (method == "auto" and report is not None and not walking):
            result["usage_api"] = _by_usage_api(
                storage, metadata, bucket, report or {}, kept.get(bucket), correct=method == "usage-api"
            )
            settled = not metadata.usage_rows(bucket, units=[UNATTRIBUTED])  # nothing left for a listing to place
            done = result["usage_api"]["comparable"] and not result["usage_api"]["drift_found"] and settled
            if method == "usage-api" or done:
                summary[bucket] = result
                continue
        elif method == "auto":
            result["usage_api"] = {
                "comparable": False,
                "reason": "listing cycle under way" if walking else (report_error or "the server has no usage API"),
            }
        if listed_any and deadline is not None and time.monotonic() >= deadline:
            result["listing"] = {"skipped": "time budget spent", "complete": False}
        else:  # the first listing of a run always walks (a unit at least per range): every run progresses
            result["listing"] = _by_listing(storage, metadata, bucket, deadline, workers, on_batch)
            listed_any = True
        summary[bucket] = result
    return summary


# -----------------------------------------------------------------------------------
# Usage API
# -----------------------------------------------------------------------------------


def server_figures(usage: Mapping[str, Any], versioned: bool) -> dict[str, int]:
    """What MinIO's report of one bucket says, in the kept figures' terms, for the fields it can say."""
    size = int(usage.get("size") or 0)
    if versioned:
        versions = int(usage.get("versionsCount") or 0) - int(usage.get("deleteMarkersCount") or 0)
        return {"versions": versions, "stored_bytes": size}
    objects = int(usage.get("objectsCount") or 0)
    return {"objects": objects, "bytes": size, "versions": objects, "stored_bytes": size, "delete_markers": 0}


def _parse_instant(value: str) -> datetime:
    """An RFC 3339 instant as MinIO writes it (nanoseconds, ``Z``), to the microsecond."""
    head, _, fraction = value.rstrip("Z").partition(".")
    digits = "".join(ch for ch in fraction if ch.isdigit())[:6]
    stamp = datetime.fromisoformat(head + (f".{digits.ljust(6, '0')}" if digits else ""))
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp


def _by_usage_api(
    storage: StorageHook,
    metadata: MetadataHook,
    bucket: str,
    report: Mapping[str, Any],
    kept: Mapping[str, Any] | None,
    *,
    correct: bool = True,
) -> dict[str, Any]:
    """Compare one bucket with MinIO's report. With ``correct`` (the ``usage-api`` method) drift is stored in
    the bucket's unattributed unit; without (``auto``) drift is only reported, for a listing to confirm and
    place: a report saved after the last write can still miss a write the scanner had not reached (the
    control-plane bench saw a scrub's and a restore's versions missing after two saves), and a false
    correction would show in the figures until the next listing."""
    started = datetime.now(UTC)
    last_text = report.get("lastUpdate") or ""
    usage = (report.get("bucketsUsageInfo") or {}).get(bucket)
    result: dict[str, Any] = {"comparable": False, "drift_found": False, "scanned_at": last_text or None}
    if not last_text or usage is None:
        result["reason"] = "the bucket is not in the server's usage report yet"
        return result
    scanned_at = _parse_instant(last_text)
    if kept is not None and kept["updated_at"] >= scanned_at:
        result["reason"] = "not comparable: writes since the server's last scan"
        return result
    versioned = storage.versions_kept(bucket)
    server = server_figures(usage, versioned)
    ours = {name: int(kept[name]) if kept else 0 for name in server}
    delta = {name: server[name] - ours[name] for name in server}
    corrections = UsageCounts(counted_at=scanned_at)
    if any(delta.values()) and not correct:
        result.update(comparable=True, drift_found=True, server=server, kept=ours, delta=delta)
        return result
    if any(delta.values()):
        stored = metadata.usage_rows(bucket, units=[UNATTRIBUTED]).get(UNATTRIBUTED) or zero()
        corrections.add(bucket, UNATTRIBUTED, {n: int(stored.get(n, 0)) + delta.get(n, 0) for n in COUNT_FIELDS})
    metadata.record_reconciliation(
        bucket,
        "usage-api",
        started,
        complete=True,
        units_checked=0,
        drift_units=1 if corrections else 0,
        drift_objects=delta.get("versions", 0),
        drift_bytes=delta.get("stored_bytes", 0),
        detail={"scanned_at": last_text, "server": server, "kept": ours, "delta": delta},
        corrections=corrections,
    )
    result.update(comparable=True, drift_found=bool(corrections), server=server, kept=ours, delta=delta)
    return result


# -----------------------------------------------------------------------------------
# Listing
# -----------------------------------------------------------------------------------


@dataclass
class _Range:
    first: str  # "" for the bucket's start
    stop: str | None  # None for its end
    position: str | None  # the unit to resume at; None once done


@dataclass
class _Walk:
    """What one range's walk found (this run)."""

    position: str | None
    units_checked: int = 0
    skipped_newer: int = 0
    drift_units: int = 0
    delta: dict[str, int] = field(default_factory=zero)
    absolute: dict[str, int] = field(default_factory=zero)
    pending: list[UsageCounts] = field(default_factory=list)  # corrections not stored yet


@dataclass
class _Context:
    storage: StorageHook
    metadata: MetadataHook
    bucket: str
    versions: bool
    deadline: float | None
    on_batch: BatchHook | None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _by_listing(
    storage: StorageHook,
    metadata: MetadataHook,
    bucket: str,
    deadline: float | None,
    workers: int,
    on_batch: BatchHook | None,
) -> dict[str, Any]:
    started = datetime.now(UTC)
    clock = time.monotonic()
    cursors = metadata.reconcile_cursors(bucket)
    if cursors:
        walk_started = cursors[0]["walk_started"]
        ranges = [_Range(c["range_first"], c["range_stop"], c["position"]) for c in cursors]
    else:
        walk_started = started
        ranges = [_Range(first or "", stop, first or "") for first, stop in storage.key_ranges(bucket, "", workers)]
    context = _Context(storage, metadata, bucket, storage.versions_kept(bucket), deadline, on_batch)
    todo = [r for r in ranges if r.position is not None]
    walks: dict[int, _Walk] = {}
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
            for index, walk in zip(
                [ranges.index(r) for r in todo], pool.map(lambda r: _walk_range(context, r), todo), strict=True
            ):
                walks[index] = walk
    for index, walk in walks.items():
        ranges[index].position = walk.position
    complete = all(r.position is None for r in ranges)
    groups = [group for walk in walks.values() for group in walk.pending]
    if complete:  # every unit attributed: what a usage API filed unattributed before the walk is settled
        clear = UsageCounts(counted_at=walk_started)
        clear.add(bucket, UNATTRIBUTED, {})
        groups.append(clear)
    delta = {n: sum(w.delta[n] for w in walks.values()) for n in COUNT_FIELDS}
    absolute = {n: sum(w.absolute[n] for w in walks.values()) for n in COUNT_FIELDS}
    found = {
        "units_checked": sum(w.units_checked for w in walks.values()),
        "drift_units": sum(w.drift_units for w in walks.values()),
    }
    detail = {
        "walk_started": walk_started.isoformat(),
        "ranges": len(ranges),
        "ranges_done": sum(r.position is None for r in ranges),
        "resumed": bool(cursors),
        "versions": context.versions,
        "skipped_newer": sum(w.skipped_newer for w in walks.values()),
        "delta": delta,
        "absolute": absolute,
        "seconds": round(time.monotonic() - clock, 3),
    }
    metadata.record_reconciliation(
        bucket,
        "listing",
        started,
        complete=complete,
        units_checked=found["units_checked"],
        drift_units=found["drift_units"],
        drift_objects=delta["versions"],
        drift_bytes=delta["stored_bytes"],
        detail=detail,
        corrections=groups,
        cursors=[]
        if complete
        else [
            {"range_first": r.first, "range_stop": r.stop, "position": r.position, "walk_started": walk_started}
            for r in ranges
        ],
    )
    return {"complete": complete, **found, **detail}


def _walk_range(context: _Context, span: _Range) -> _Walk:
    """Walk one key range from its position: fold the pages' entries into per-unit totals in key order,
    compare each batch of completed units (and the stored units between them) with the store; stop at a
    unit boundary once the deadline passed and at least one unit was done."""
    storage, bucket = context.storage, context.bucket
    start, stop = span.position or "", span.stop
    walk = _Walk(position=start)
    batch: list[tuple[str, dict[str, int]]] = []
    batch_lo: str = start
    batch_listed: float | None = None  # when the earliest page of the batch was asked for (epoch seconds)
    unit: str | None = None
    totals = zero()
    unit_listed = 0.0
    pages = storage.listing_pages(bucket, "", start or None, versions=context.versions)
    try:
        while True:
            asked = time.time()
            try:
                page = next(pages)
            except StopIteration:
                break
            except Exception as err:
                raise storage.translate(err, f"list {bucket}") from err
            entries = sorted(page.entries, key=lambda entry: entry[0])  # stable: a key's versions keep their order
            for key, size, latest, marker in entries:
                if key < start:
                    continue
                if stop is not None and key >= stop:
                    break
                this = unit_of(key)
                if this != unit:
                    if unit is not None:
                        batch.append((unit, totals))
                        batch_listed = unit_listed if batch_listed is None else min(batch_listed, unit_listed)
                        spent = _spent(context)  # asked once: a batch is compared before the walk stops
                        if len(batch) >= BATCH_UNITS or spent:
                            _compare(context, walk, batch, batch_lo, this, batch_listed)
                            batch, batch_lo, batch_listed = [], this, None
                        if spent:
                            walk.position = this
                            return walk
                    unit, totals, unit_listed = this, zero(), asked
                if marker:
                    totals["delete_markers"] += 1
                elif key and not key.endswith("/"):
                    totals["versions"] += 1
                    totals["stored_bytes"] += size
                    if latest:
                        totals["objects"] += 1
                        totals["bytes"] += size
            else:
                if page.truncated:
                    continue
            break  # the range's end (its stop, or the bucket's)
        if unit is not None:
            batch.append((unit, totals))
            batch_listed = unit_listed if batch_listed is None else min(batch_listed, unit_listed)
        _compare(context, walk, batch, batch_lo, stop, asked if batch_listed is None else min(batch_listed, asked))
        walk.position = None
        return walk
    finally:
        pages.close()


def _spent(context: _Context) -> bool:
    return context.deadline is not None and time.monotonic() >= context.deadline


def _compare(
    context: _Context,
    walk: _Walk,
    batch: list[tuple[str, dict[str, int]]],
    lo: str,
    hi: str | None,
    listed: float,
) -> None:
    """Compare listed units (``batch``, names in ``[lo, hi)``) with the stored units of that interval; a
    stored unit counted after ``listed`` is a writer's newer count and left alone; the rest that differ
    (or are stored but not listed: gone from the server) become corrections counted at ``listed``."""
    bucket = context.bucket
    if context.on_batch is not None:
        context.on_batch(bucket, [name for name, _ in batch])
    listed_at = datetime.fromtimestamp(listed, UTC)
    stored = context.metadata.usage_rows(bucket, lo or None, hi)
    stored.pop(UNATTRIBUTED, None)  # settled when a cycle completes
    corrections = UsageCounts(counted_at=listed_at)
    found = [*batch, *((name, zero()) for name in stored.keys() - {name for name, _ in batch})]
    for name, totals in found:
        kept = stored.get(name)
        if kept is not None and kept["counted_at"] > listed_at:
            walk.skipped_newer += 1
            continue
        walk.units_checked += 1
        ours = kept or zero()
        diff = {n: totals[n] - int(ours[n]) for n in COUNT_FIELDS}
        if any(diff.values()):
            corrections.add(bucket, name, totals)
            walk.drift_units += 1
            for n in COUNT_FIELDS:
                walk.delta[n] += diff[n]
                walk.absolute[n] += abs(diff[n])
    if corrections:
        walk.pending.append(corrections)
    if sum(len(group) for group in walk.pending) > MAX_PENDING:  # bounded: store what is held so far
        for group in walk.pending:
            context.metadata.record_usage(group)
        walk.pending = []
