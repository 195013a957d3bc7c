"""Storage hygiene for the maintenance DAG: reclaim space that no reader will ever use again.

* :func:`abort_stale_uploads`: multipart uploads started long ago and never completed (their parts take
  space but no object shows them).
* :func:`stray_objects`: objects no manifest names (left by a publish, hand-off, archive or ingest that
  stopped part-way, or by a writer outside the commit protocol); a dry run by default.
* :func:`vacuum_metadata`: ``VACUUM (ANALYZE)`` of the metadata tables with many dead rows.
* :func:`vacuum_volumes`: the object store's own compaction where it needs one (SeaweedFS), skipped where
  the server reclaims space itself (MinIO).

Each returns a small JSON-safe report of what it found and reclaimed. Nothing younger than its age bound
is ever touched, and nothing is deleted that a published manifest names.
"""

from __future__ import annotations

import importlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from e2e3d_provider.core.layout import (
    BLOB_AREA,
    BUCKET_ARCHIVE,
    BUCKET_INPUT,
    BUCKET_OUTPUT,
    DATASET_MANIFEST_NAME,
    DEFAULT_BUCKETS,
    ID_PATTERN,
    MANIFEST_NAME,
    SUCCESS_NAME,
    VARIANTS_NAME,
    WORK_AREA,
    archive_prefix,
    blob_key,
    output_prefix,
    parse_run_name,
    validate_sha256,
)
from e2e3d_provider.core.manifest import Manifest
from e2e3d_provider.core.transfer import RemoteObject
from e2e3d_provider.exceptions import (
    ChecksumMismatchError,
    InvalidNameError,
    ManifestError,
    ObjectNotFoundError,
    RunConflictError,
)
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.inputs.datasets import read_dataset
from e2e3d_provider.lifecycle.locks import job_lock
from e2e3d_provider.lifecycle.results.published import read_published

log = logging.getLogger(__name__)

#: keys named in a report per bucket (the counts and bytes cover all of them)
SAMPLE_SIZE = 10
#: files a published prefix keeps besides those its manifest names (the commit protocol's own, and
#: right-sizing's record, which a run directory carries beside its results)
CONTROL_NAMES = (SUCCESS_NAME, MANIFEST_NAME, VARIANTS_NAME)
#: what a published manifest cannot be read as: a damaged set, left for a person to look at
_DAMAGED = (ObjectNotFoundError, ChecksumMismatchError, ManifestError)


def _is_old(obj: RemoteObject, cutoff: datetime) -> bool:
    """Whether an object was last written at or before ``cutoff`` (one of unknown age never is)."""
    return obj.last_modified is not None and obj.last_modified <= cutoff


def _sample(keys: Iterable[str], size: int = SAMPLE_SIZE) -> list[str]:
    return sorted(keys)[:size]


# ---------------------------------------------------------------------------------------
# Incomplete multipart uploads
# ---------------------------------------------------------------------------------------


def abort_stale_uploads(
    storage: StorageHook,
    older_than: timedelta,
    buckets: tuple[str, ...] = DEFAULT_BUCKETS,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Abort every incomplete multipart upload started more than ``older_than`` ago; per bucket, how many
    were aborted, the bytes their uploaded parts held, and a sample of their keys."""
    cutoff = (now or datetime.now(UTC)) - older_than
    report: dict[str, Any] = {}
    for bucket in buckets:
        if storage.bucket_exists(bucket):
            report[bucket] = _abort_in(storage, bucket, cutoff)
    return {
        "older_than_seconds": older_than.total_seconds(),
        "aborted": sum(r["aborted"] for r in report.values()),
        "bytes": sum(r["bytes"] for r in report.values()),
        "buckets": report,
    }


#: what the report says of a server that lists incomplete uploads only by exact key
SERVER_EXPIRES_UPLOADS = (
    "this server lists incomplete uploads only for an exact key (MinIO), so none can be found here; MinIO "
    "aborts them itself after its api stale_uploads_expiry (24 h by default)"
)


def _abort_in(storage: StorageHook, bucket: str, cutoff: datetime) -> dict[str, Any]:
    """Abort the uploads of one bucket started at or before ``cutoff`` (one gone meanwhile is not counted).
    On a server that cannot list them by prefix, the report says so instead of counting a silent zero."""
    if not storage.lists_uploads_by_prefix(bucket):
        return {"aborted": 0, "bytes": 0, "sample": [], "skipped": SERVER_EXPIRES_UPLOADS}
    aborted, nbytes, keys = 0, 0, []
    for upload in storage.list_multipart_uploads(bucket):
        if upload.initiated is None or upload.initiated > cutoff:
            continue
        size = storage.multipart_upload_bytes(bucket, upload.key, upload.upload_id)
        if size is not None and storage.abort_multipart_upload(bucket, upload.key, upload.upload_id):
            aborted, nbytes = aborted + 1, nbytes + size
            keys.append(upload.key)
    if aborted:
        log.info("hygiene: aborted %d stale multipart uploads in %s (%d bytes of parts)", aborted, bucket, nbytes)
    return {"aborted": aborted, "bytes": nbytes, "sample": _sample(keys)}


# ---------------------------------------------------------------------------------------
# Stray objects
# ---------------------------------------------------------------------------------------


def stray_objects(
    storage: StorageHook,
    metadata: MetadataHook,
    grace: timedelta,
    *,
    dry_run: bool = True,
    now: datetime | None = None,
    output_bucket: str = BUCKET_OUTPUT,
    input_bucket: str = BUCKET_INPUT,
    archive_bucket: str = BUCKET_ARCHIVE,
) -> dict[str, Any]:
    """Objects that no manifest names and that were last written more than ``grace`` ago:

    * in ``output``: below ``<job_id>/``, what the published manifest does not name (the manifest,
      SUCCESS and right-sizing's record are kept), or everything of a job with no SUCCESS and no run
      queued or running; and hand-offs (``.work/<job_id>/<run>/``) of runs not queued or running;
    * in ``input``: content-addressed images (``.cas/sha256/...``) that no ``<dataset>/dataset.json`` names;
    * in ``archive``: below ``<job_id>/<job_id>_<stamp>/``, what that run's archived manifest does not name,
      or everything of an archive copy that never got its SUCCESS.

    A dry run (the default) only reports per bucket the count, bytes and a sample of keys. Otherwise they
    are deleted; a job's keys in ``output`` under the job's lock, judged again there (a job whose lock
    another task holds is left for the next run and named under ``busy``). A prefix whose SUCCESS exists
    but does not vouch for a readable manifest is left alone and named under ``damaged``."""
    cutoff = (now or datetime.now(UTC)) - grace
    try:
        reports = {
            output_bucket: _output_pass(storage, metadata, output_bucket, cutoff, dry_run),
            input_bucket: _input_pass(storage, input_bucket, cutoff, dry_run),
            archive_bucket: _archive_pass(storage, archive_bucket, cutoff, dry_run),
        }
    finally:  # the units it removed strays from, counted afresh
        if not dry_run:
            metadata.record_usage(storage.recount_touched())
    return {
        "dry_run": dry_run,
        "grace_seconds": grace.total_seconds(),
        "objects": sum(r["objects"] for r in reports.values()),
        "bytes": sum(r["bytes"] for r in reports.values()),
        "deleted": sum(r["deleted"] for r in reports.values()),
        "buckets": reports,
    }


def _bucket_report(strays: list[RemoteObject], deleted: int, **extra: Any) -> dict[str, Any]:
    return {
        "objects": len(strays),
        "bytes": sum(o.size for o in strays),
        "deleted": deleted,
        "sample": _sample(o.key for o in strays),
        **extra,
    }


def _published_keep(storage: StorageHook, bucket: str, job_id: str, prefix: str) -> set[str] | None:
    """The keys below ``prefix`` that its published run keeps, or None when its SUCCESS does not vouch
    for a readable manifest of this job (a damaged set)."""
    try:
        manifest: Manifest = read_published(storage, bucket, job_id, prefix).manifest
    except _DAMAGED as err:
        log.warning("hygiene: %s/%s is left alone: %s", bucket, prefix, err)
        return None
    return {prefix + e.path for e in manifest.files} | {prefix + name for name in CONTROL_NAMES}


def _prefix_strays(
    storage: StorageHook,
    bucket: str,
    job_id: str,
    prefix: str,
    objects: list[RemoteObject],
    cutoff: datetime,
    published: bool = False,
) -> list[RemoteObject] | None:
    """The old objects below a (published or never published) prefix that no published manifest names;
    None for a damaged prefix, or one without SUCCESS whose job is ``published`` in PostgreSQL (its marker
    was lost or withdrawn by a scrub: the scrub's and the restore's to judge, never a stray)."""
    if not any(o.key == prefix + SUCCESS_NAME for o in objects):
        return None if published else [o for o in objects if _is_old(o, cutoff)]
    keep = _published_keep(storage, bucket, job_id, prefix)
    if keep is None:
        return None
    return [o for o in objects if o.key not in keep and _is_old(o, cutoff)]


# --- output -----------------------------------------------------------------------------


def _work_stamp(key: str, job_id: str) -> str | None:
    """The stamp of the run whose hand-off ``key`` (``.work/<job_id>/<job_id>_<stamp>/...``) belongs to."""
    parts = key.split("/")
    run = parse_run_name(parts[2], job_id) if len(parts) > 3 else None
    return run[1] if run else None


def _group_output(listed: list[RemoteObject]) -> dict[str, tuple[list[RemoteObject], list[RemoteObject]]]:
    """Each job's objects in ``output``: those below ``<job_id>/`` and those below ``.work/<job_id>/``
    (keys of any other shape are no job's, and are left alone)."""
    jobs: dict[str, tuple[list[RemoteObject], list[RemoteObject]]] = defaultdict(lambda: ([], []))
    for obj in listed:
        head, _, rest = obj.key.partition("/")
        if head == WORK_AREA:
            job_id = rest.partition("/")[0]
            if ID_PATTERN.match(job_id) and ".." not in job_id:
                jobs[job_id][1].append(obj)
        elif rest and ID_PATTERN.match(head) and ".." not in head:
            jobs[head][0].append(obj)
    return dict(jobs)


def _job_strays(
    storage: StorageHook,
    bucket: str,
    job_id: str,
    objects: list[RemoteObject],
    work: list[RemoteObject],
    active: set[str],
    cutoff: datetime,
    published: bool = False,
) -> list[RemoteObject] | None:
    """One job's strays in ``output``: old hand-offs of runs not queued or running (``active`` stamps),
    and, unless a run is in flight, the old objects below its prefix no published manifest names; None
    when its prefix is damaged (``published``: PostgreSQL says the job has results there)."""
    strays = [o for o in work if (stamp := _work_stamp(o.key, job_id)) and stamp not in active and _is_old(o, cutoff)]
    if active or not objects:
        return strays  # a queued or running run may be publishing below the prefix right now
    below = _prefix_strays(storage, bucket, job_id, output_prefix(job_id), objects, cutoff, published)
    return None if below is None else strays + below


def _output_pass(
    storage: StorageHook, metadata: MetadataHook, bucket: str, cutoff: datetime, dry_run: bool
) -> dict[str, Any]:
    jobs = _group_output(storage.list_objects(bucket))
    active: dict[str, set[str]] = defaultdict(set)
    for job_id, stamp in metadata.active_runs(jobs):
        active[job_id].add(stamp)
    published = metadata.jobs_with_output(jobs)
    found: dict[str, list[RemoteObject]] = {}
    damaged = []
    for job_id, (objects, work) in sorted(jobs.items()):
        strays = _job_strays(storage, bucket, job_id, objects, work, active[job_id], cutoff, job_id in published)
        if strays is None:
            damaged.append(output_prefix(job_id))
        elif strays:
            found[job_id] = strays
    busy: list[str] = []
    if not dry_run:
        found = {job_id: _delete_job_strays(storage, metadata, bucket, job_id, cutoff, busy) for job_id in found}
    strays = [o for objects in found.values() for o in objects]
    return _bucket_report(strays, 0 if dry_run else len(strays), damaged=damaged[:SAMPLE_SIZE], busy=busy)


def _delete_job_strays(
    storage: StorageHook, metadata: MetadataHook, bucket: str, job_id: str, cutoff: datetime, busy: list[str]
) -> list[RemoteObject]:
    """Judge one job again under its lock (no run starts or publishes meanwhile) and delete its strays;
    returns what went (nothing when another task holds the lock)."""
    try:
        with job_lock(metadata, job_id, wait=0):
            objects = storage.list_objects(bucket, output_prefix(job_id))
            work = storage.list_objects(bucket, f"{WORK_AREA}/{job_id}/")
            active = {stamp for _, stamp in metadata.active_runs([job_id])}
            published = job_id in metadata.jobs_with_output([job_id])
            strays = _job_strays(storage, bucket, job_id, objects, work, active, cutoff, published) or []
            storage.delete_keys(bucket, [o.key for o in strays])
    except RunConflictError:
        busy.append(job_id)
        return []
    if strays:
        log.info("hygiene: deleted %d stray objects of job %s from %s", len(strays), job_id, bucket)
    return strays


# --- input ------------------------------------------------------------------------------


def _blob_sha(key: str) -> str | None:
    """The sha256 a content-addressed key (``.cas/sha256/<2 hex>/<sha256>``) names, else None."""
    if not key.startswith(BLOB_AREA + "/"):
        return None
    try:
        sha = validate_sha256(key.rsplit("/", 1)[-1])
    except InvalidNameError:
        return None
    return sha if blob_key(sha) == key else None


def _named_blobs(storage: StorageHook, bucket: str, listed: list[RemoteObject]) -> set[str] | None:
    """Every sha256 a dataset manifest in ``listed`` names; None if one of them cannot be read (then
    nothing can be known to be unnamed)."""
    named: set[str] = set()
    for obj in listed:
        dataset, _, name = obj.key.partition("/")
        if name != DATASET_MANIFEST_NAME or not ID_PATTERN.match(dataset) or ".." in dataset:
            continue
        try:
            manifest = read_dataset(storage, dataset, bucket)
        except (ManifestError, ChecksumMismatchError) as err:
            log.warning("hygiene: no image of %s is deleted: %s", bucket, err)
            return None
        named |= {image.sha256 for image in manifest.images} if manifest else set()
    return named


def _blob_strays(storage: StorageHook, bucket: str, cutoff: datetime) -> list[RemoteObject] | None:
    """The old content-addressed images no dataset manifest names; None if a manifest is unreadable."""
    listed = storage.list_objects(bucket)
    named = _named_blobs(storage, bucket, listed)
    if named is None:
        return None
    return [o for o in listed if (sha := _blob_sha(o.key)) and sha not in named and _is_old(o, cutoff)]


def _input_pass(storage: StorageHook, bucket: str, cutoff: datetime, dry_run: bool) -> dict[str, Any]:
    strays = _blob_strays(storage, bucket, cutoff)
    if strays is None:
        return _bucket_report([], 0, unreadable_manifest=True)
    if not dry_run and strays:
        # the manifests are read again just before the delete: one written since names its images too
        again = _blob_strays(storage, bucket, cutoff) or []
        strays = [o for o in strays if o.key in {s.key for s in again}]
        storage.delete_keys(bucket, [o.key for o in strays])
        log.info("hygiene: deleted %d images no dataset names from %s", len(strays), bucket)
    return _bucket_report(strays, 0 if dry_run else len(strays))


# --- archive ----------------------------------------------------------------------------


def _group_archive(listed: list[RemoteObject]) -> dict[tuple[str, str], list[RemoteObject]]:
    """Each archived run's objects, by ``(job_id, stamp)`` (keys of any other shape are left alone)."""
    runs: dict[tuple[str, str], list[RemoteObject]] = defaultdict(list)
    for obj in listed:
        parts = obj.key.split("/", 2)
        run = parse_run_name(parts[1], parts[0]) if len(parts) == 3 else None
        if run is not None:
            runs[run].append(obj)
    return dict(runs)


def _archive_pass(storage: StorageHook, bucket: str, cutoff: datetime, dry_run: bool) -> dict[str, Any]:
    strays: list[RemoteObject] = []
    damaged = []
    for (job_id, stamp), objects in sorted(_group_archive(storage.list_objects(bucket)).items()):
        prefix = archive_prefix(job_id, stamp)
        found = _prefix_strays(storage, bucket, job_id, prefix, objects, cutoff)
        if found is None:
            damaged.append(prefix)
        else:
            strays += found
    if not dry_run and strays:
        storage.delete_keys(bucket, [o.key for o in strays])
        log.info("hygiene: deleted %d stray objects from %s", len(strays), bucket)
    return _bucket_report(strays, 0 if dry_run else len(strays), damaged=damaged[:SAMPLE_SIZE])


# ---------------------------------------------------------------------------------------
# The metadata database and the object store's volumes
# ---------------------------------------------------------------------------------------


def vacuum_metadata(metadata: MetadataHook, dead_share: float = 0.2, min_dead_rows: int = 50) -> dict[str, Any]:
    """``VACUUM (ANALYZE)`` each table of the ``e2e3d`` schema with at least ``min_dead_rows`` dead rows
    that are more than ``dead_share`` of its rows; per table vacuumed, its dead rows and total size
    before and after."""
    before = metadata.table_health()
    chosen = sorted(
        name
        for name, t in before.items()
        if t["dead_rows"]
        and t["dead_rows"] >= min_dead_rows
        and t["dead_rows"] / (t["live_rows"] + t["dead_rows"]) > dead_share
    )
    metadata.vacuum_tables(chosen)
    after = metadata.table_health() if chosen else before
    tables = {
        name: {
            "dead_rows_before": before[name]["dead_rows"],
            "dead_rows_after": after.get(name, before[name])["dead_rows"],
            "bytes_before": before[name]["bytes"],
            "bytes_after": after.get(name, before[name])["bytes"],
        }
        for name in chosen
    }
    return {
        "tables_checked": len(before),
        "vacuumed": tables,
        # VACUUM (not FULL) makes dead rows' space reusable without returning it to the disk: rows, not bytes
        "dead_rows_removed": sum(t["dead_rows_before"] - t["dead_rows_after"] for t in tables.values()),
    }


#: the Airflow option naming the object store's volume compaction (``[e2e3d] volume_vacuum``)
VACUUM_OPTION = "[e2e3d] volume_vacuum"


def configured_vacuum(setting: str | None, endpoint_url: str) -> Callable[[], dict[str, Any]] | None:
    """The volume compaction ``setting`` names: the dotted path of a function that takes the object store's
    endpoint and returns the compaction to run (as Airflow's ``[core] hostname_callable`` names a function),
    e.g. ``e2e3d_provider.devstack.volumes.embedded_vacuum``, which ``e2e3d airflow`` and ``e2e3d stack env``
    set for the embedded stack. Empty: none (an object store that reclaims space itself, like MinIO).
    Imported when maintenance runs, so no DAG imports a developer module to compact volumes; a path that
    names nothing is a ValueError saying which."""
    if not setting or not setting.strip():
        return None
    module_name, _, name = setting.strip().rpartition(".")
    try:
        factory = getattr(importlib.import_module(module_name), name) if module_name else None
    except (ImportError, AttributeError):
        factory = None
    if not callable(factory):
        raise ValueError(f"{VACUUM_OPTION} = {setting!r} names no function (a dotted path: package.module.function)")
    vacuum = factory(endpoint_url)
    if vacuum is not None and not callable(vacuum):
        raise ValueError(f"{VACUUM_OPTION} = {setting!r} gave {vacuum!r} for {endpoint_url}, not a compaction to run")
    return cast("Callable[[], dict[str, Any]] | None", vacuum)


def vacuum_volumes(vacuum: Callable[[], dict[str, Any]] | None) -> dict[str, Any]:
    """The object store's own compaction, through ``vacuum`` (for SeaweedFS, whose volumes keep deleted
    objects' bytes until compacted), whose report says what it did or why it did nothing; skipped, saying
    so, when none is configured."""
    if vacuum is None:
        return {"skipped": f"no volume compaction is configured ({VACUUM_OPTION}): nothing was compacted"}
    return vacuum()
