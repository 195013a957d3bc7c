"""Publish and unpublish a run under the commit protocol (DESIGN §4): what makes a SUCCESS marker
mean "complete and verified", and how it stops meaning anything before a job's objects go.

1. Remove any old SUCCESS (locally and in the bucket) before anything else.
2. Upload every file, hashed as it is read and sent (identical objects are skipped), build the manifest
   from those hashes and the ETags the server gave, verify by one listing that every object is stored
   with that size and ETag, and drop stale objects the manifest no longer lists.
3. Upload the manifest (``metadata.json``), then write SUCCESS last, locally and in the bucket.

A crash anywhere leaves no SUCCESS; a rerun is safe and sends only what is missing or changed.
Unpublishing runs the other way: SUCCESS first, then the rest, so no reader ever sees a marker over
a partial set. This module holds the writes; :mod:`e2e3d_provider.lifecycle.results.published` the reads.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e3d_provider.core.layout import (
    BUCKET_OUTPUT,
    MANIFEST_NAME,
    SUCCESS_NAME,
    VARIANTS_NAME,
    manifest_key,
    output_prefix,
    success_key,
    work_prefix,
)
from e2e3d_provider.core.local_paths import require_local_dir
from e2e3d_provider.core.manifest import FileEntry, Manifest, iter_run_files, sha256_file, write_atomic, write_manifest
from e2e3d_provider.core.marker import SuccessMarker
from e2e3d_provider.core.transfer import TransferResult
from e2e3d_provider.core.variants import RightSizeRecord, annotate, select_paths, select_published
from e2e3d_provider.core.xcom import PublishXCom
from e2e3d_provider.exceptions import ObjectNotFoundError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.locks import DEFAULT_LOCK_WAIT, job_lock
from e2e3d_provider.lifecycle.results.handoff import discard, read_handoff
from e2e3d_provider.lifecycle.results.published import Published, verify_remote


@dataclass
class PublishResult:
    """What a publish did: the manifest's totals and what actually crossed the wire."""

    job_id: str
    stamp: str
    bucket: str
    prefix: str
    files: int
    bytes: int
    uploaded_files: int
    uploaded_bytes: int
    removed_stale: int
    seconds: float
    manifest_key: str
    success_key: str
    transfer: TransferResult | None = field(default=None, repr=False)  # what the upload step moved
    handed_off: bool = False  # published from the run's hand-off (server-side copies), not a local directory

    def to_xcom(self) -> PublishXCom:
        return {
            "job_id": self.job_id,
            "stamp": self.stamp,
            "bucket": self.bucket,
            "prefix": self.prefix,
            "files": self.files,
            "bytes": self.bytes,
            "manifest_key": self.manifest_key,
            "success_key": self.success_key,
            "uploaded_files": self.uploaded_files,
            "uploaded_bytes": self.uploaded_bytes,
            "seconds": round(self.seconds, 3),
        }


def publish_run(
    storage: StorageHook,
    run_dir: Path,
    job_id: str,
    stamp: str,
    bucket: str,
    statistics: dict[str, Any] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> PublishResult:
    """Publish a run directory to ``bucket`` under ``<job_id>/`` following the commit protocol."""
    prefix, marker, manifest_name = output_prefix(job_id), success_key(job_id), manifest_key(job_id)
    (run_dir / SUCCESS_NAME).unlink(missing_ok=True)
    storage.delete_object(bucket, marker)  # step 1: from here on, no reader trusts this job

    # a folder it cannot read fails the walk, naming it; right-sizing's record annotates the files and
    # leaves dropped intermediates out (and refuses variants it did not record)
    record = RightSizeRecord.read(run_dir)
    selection = select_published(list(iter_run_files(run_dir)), record)
    files = selection.files
    if not files:
        raise FileNotFoundError(f"run directory {run_dir} holds no result files to publish")
    # step 2: each file is read once, hashed as it is sent (identical objects skipped by one listing)
    transfer = storage.upload_dir(run_dir, bucket, prefix, files=files, on_progress=on_progress)
    manifest = Manifest(
        job_id,
        stamp,
        annotate([FileEntry(rel, *transfer.checksums[rel]) for rel, _ in files], record),
        dict(statistics or {}),
        dropped=selection.dropped,
        preservation=record.preservation if record else {},
    )
    if record is not None and record.statistics:
        manifest.statistics.setdefault("right_size", record.statistics)
    manifest.statistics.setdefault("files", len(manifest.files))
    manifest.statistics.setdefault("bytes", manifest.total_bytes)
    # one listing for the checks, the stale objects and the job's usage figures (derived after the writes)
    unit = storage.list_unit(bucket, prefix)
    listed = unit.objects()
    # every object is there with the size and the server's ETag of what was sent
    verify_remote(storage, bucket, prefix, manifest, deep=True, listed=listed, read_on_mismatch=False)

    keep = {prefix + entry.path for entry in manifest.files} | {marker, manifest_name}
    stale = [key for key in listed if key not in keep]
    for key in stale:
        storage.delete_object(bucket, key)

    manifest_path = run_dir / MANIFEST_NAME
    write_manifest(manifest, manifest_path)
    manifest_sha = sha256_file(manifest_path)
    storage.upload_file(manifest_path, bucket, manifest_name, sha256=manifest_sha)

    marker_body = SuccessMarker.of(manifest, manifest_sha).body
    storage.put_bytes(bucket, marker, marker_body, "application/json")  # step 3: SUCCESS last
    storage.note_counted(
        unit.after(deleted=stale, put=[(manifest_name, manifest_path.stat().st_size), (marker, len(marker_body))])
    )
    write_atomic(run_dir / SUCCESS_NAME, marker_body)
    return PublishResult(
        job_id,
        stamp,
        bucket,
        prefix,
        len(manifest.files),
        manifest.total_bytes,
        transfer.files,
        transfer.bytes,
        len(stale),
        transfer.seconds,
        manifest_name,
        marker,
        transfer,
    )


def copy_pinned(
    storage: StorageHook,
    manifest: Manifest,
    source_bucket: str,
    source: str,
    target_bucket: str,
    target: str,
    pins: dict[str, str | None],
) -> None:
    """Server-side copy every manifest file, each only while the source has its pinned ETag (a file with
    no recorded ETag, from an older manifest, has its bytes read against the sha256 first)."""
    if any(pins[entry.path] is None for entry in manifest.files):
        listed = {obj.key: obj for obj in storage.list_objects(source_bucket, source)}
        verify_remote(storage, source_bucket, source, manifest, listed=listed)
        pins = {entry.path: pins[entry.path] or listed[source + entry.path].etag for entry in manifest.files}
    for entry in manifest.files:
        storage.copy_object(
            source_bucket,
            source + entry.path,
            target_bucket,
            target + entry.path,
            if_match=pins[entry.path],
            size=entry.size,
        )


def publish_handoff(
    storage: StorageHook,
    job_id: str,
    stamp: str,
    bucket: str,
    statistics: dict[str, Any] | None = None,
    handoff_bucket: str = BUCKET_OUTPUT,
) -> PublishResult:
    """Publish a run that a task handed off (lifecycle.handoff) under the commit protocol, from any host
    and with no bytes through it: SUCCESS removed first; every published file copied server-side from the
    work prefix, pinned to the ETag the hand-off recorded (its sha256 was computed as it was sent); one
    listing checks every size and records the stored ETags; stale objects dropped; manifest; SUCCESS last."""
    began = time.perf_counter()
    handed = read_handoff(storage, job_id, stamp, handoff_bucket)
    if handed is None:
        raise ObjectNotFoundError(f"job {job_id} run {stamp} was not handed off ({work_prefix(job_id, stamp)})")
    source = work_prefix(job_id, stamp)
    prefix, marker, manifest_name = output_prefix(job_id), success_key(job_id), manifest_key(job_id)
    storage.delete_object(bucket, marker)  # step 1: from here on, no reader trusts this job
    entries = {e.path: e for e in handed.files}
    record = None
    if VARIANTS_NAME in entries:  # right-sizing's record travelled with the files
        record = RightSizeRecord.from_json(storage.get_bytes(handoff_bucket, source + VARIANTS_NAME))
    published = [e for e in handed.files if e.path != VARIANTS_NAME]
    kept, dropped = select_paths([e.path for e in published], {e.path: e.size for e in published}, record)
    chosen = Manifest(job_id, stamp, [entries[rel] for rel in kept])
    copy_pinned(storage, chosen, handoff_bucket, source, bucket, prefix, {e.path: e.etag for e in chosen.files})
    unit = storage.list_unit(bucket, prefix)  # the copies' ETags, the stale objects, the job's usage figures
    listed = unit.objects()
    stored = [
        FileEntry(e.path, e.size, e.sha256, listed[prefix + e.path].etag)
        for e in chosen.files
        if prefix + e.path in listed
    ]
    manifest = Manifest(
        job_id,
        stamp,
        annotate(stored, record),
        dict(statistics or {}),
        dropped=dropped,
        preservation=record.preservation if record else {},
    )
    manifest.statistics.setdefault("files", len(manifest.files))
    manifest.statistics.setdefault("bytes", manifest.total_bytes)
    if record is not None and record.statistics:
        manifest.statistics.setdefault("right_size", record.statistics)
    verify_remote(storage, bucket, prefix, chosen, deep=False, listed=listed)  # sizes
    keep = {prefix + e.path for e in manifest.files} | {marker, manifest_name}
    stale = [key for key in listed if key not in keep]
    for key in stale:
        storage.delete_object(bucket, key)
    body = manifest.to_json().encode()
    storage.put_bytes(bucket, manifest_name, body, "application/json")
    marker_body = SuccessMarker.of(manifest, hashlib.sha256(body).hexdigest()).body
    storage.put_bytes(bucket, marker, marker_body, "application/json")
    storage.note_counted(unit.after(deleted=stale, put=[(manifest_name, len(body)), (marker, len(marker_body))]))
    seconds = time.perf_counter() - began
    copied = TransferResult("copy", bucket, prefix)
    copied.files, copied.bytes, copied.seconds = len(manifest.files), manifest.total_bytes, seconds
    return PublishResult(
        job_id, stamp, bucket, prefix, len(manifest.files), manifest.total_bytes, len(manifest.files),
        manifest.total_bytes, len(stale), seconds, manifest_name, marker, copied,
    )  # fmt: skip


def publish_subset(
    storage: StorageHook, bucket: str, job_id: str, published: Published, prefixes: list[str], note: dict[str, Any]
) -> int:
    """Take the files below ``prefixes`` out of a published job, under the commit protocol: its SUCCESS
    goes first, then those objects, then a manifest without them (naming them in ``dropped`` with
    ``note``) and a new SUCCESS last. Returns how many objects went; with none below ``prefixes``,
    nothing is touched."""
    manifest = published.manifest
    gone = [e for e in manifest.files if any(e.path.startswith(p) for p in prefixes)]
    if not gone:
        return 0
    prefix = output_prefix(job_id)
    storage.delete_object(bucket, success_key(job_id))  # from here on, no reader trusts this job
    for entry in gone:
        storage.delete_object(bucket, prefix + entry.path)
    going = {e.path for e in gone}
    kept = [e for e in manifest.files if e.path not in going]
    dropped = list(manifest.dropped)
    for p in prefixes:
        mine = [e for e in gone if e.path.startswith(p)]
        if mine:
            dropped.append({"prefix": p, "files": len(mine), "bytes": sum(e.size for e in mine), **note})
    smaller = Manifest(
        manifest.job_id,
        manifest.stamp,
        kept,
        {**manifest.statistics, "files": len(kept), "bytes": sum(e.size for e in kept)},
        created_at=manifest.created_at,
        dropped=dropped,
        preservation=manifest.preservation,
    )
    body = smaller.to_json().encode()
    storage.put_bytes(bucket, manifest_key(job_id), body, "application/json")
    marker = SuccessMarker.of(smaller, hashlib.sha256(body).hexdigest()).body
    storage.put_bytes(bucket, success_key(job_id), marker, "application/json")  # SUCCESS last
    return len(gone)


def unpublish(storage: StorageHook, bucket: str, prefix: str) -> int:
    """Remove a published set below ``prefix``: its SUCCESS first, then everything else; returns how
    many objects went after the marker. Idempotent: an absent set removes nothing."""
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    storage.delete_object(bucket, prefix + SUCCESS_NAME)  # from here on, no reader trusts this set
    return storage.delete_prefix(bucket, prefix)


def publish_job(
    storage: StorageHook,
    metadata: MetadataHook | None,
    job_id: str,
    stamp: str,
    *,
    run_dir: str | Path | None = None,
    origin_host: str | None = None,
    bucket: str = BUCKET_OUTPUT,
    statistics: dict[str, Any] | None = None,
    lock_wait: float = DEFAULT_LOCK_WAIT,
) -> PublishResult:
    """Publish one run of a job, whichever way it reached this task, under the job's lock (two runs of one
    job never publish at once, on any hosts; ``metadata`` ``None`` takes no lock). A run handed off to
    object storage is published from there by server-side copies, on any host, and its hand-off removed;
    otherwise ``run_dir`` must be on this host (LocalPathError naming ``origin_host`` when it is not) and
    is published from disk."""
    with job_lock(metadata, job_id, lock_wait) as lock:
        if read_handoff(storage, job_id, stamp) is not None:
            published = publish_handoff(storage, job_id, stamp, bucket, statistics)
            discard(storage, job_id, stamp)
            published.handed_off = True
        else:
            local = require_local_dir(run_dir or "", origin_host, "run directory")
            published = publish_run(storage, local, job_id, stamp, bucket, statistics)
        if metadata is not None:  # the job's units as they now stand, counted under its lock
            metadata.record_usage(storage.recount_touched(), conn=lock)
        return published
