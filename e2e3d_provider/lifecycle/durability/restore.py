"""Bring the buckets and the metadata schema back from a backup: all of it, or one job.

What is missing comes back (objects absent from a bucket, rows absent from a table); what exists and
equals the backup is left alone; what exists and differs is a conflict, kept as it is unless
``overwrite`` (on a versioned bucket the replaced object stays as a noncurrent version). Every object is
checked against the backup's SHA-256 as it is fetched; each job's SUCCESS marker is written after every
other object, and only over a set that is whole (its manifest the one the marker names, every file matching
it): a set with kept conflicts or damaged files gets no marker, so no reader trusts it. A rerun after an
interruption restores only what is still missing.

A ``dry_run`` compares the same way and writes nothing: ``restored_objects``/``restored_bytes`` and the rows'
``restored`` then count what would come back (the rows are merged in a transaction that is rolled back), and
the SUCCESS markers of sets that are not whole yet are counted as if their sets came back whole.
"""

from __future__ import annotations

import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e3d_provider.core.backup_catalog import (
    BLOB_AREA,
    DUMP_NAME,
    CatalogEntry,
    backup_blob_key,
    snapshot_key,
)
from e2e3d_provider.core.layout import (
    BUCKET_ARCHIVE,
    BUCKET_OUTPUT,
    DEFAULT_BUCKETS,
    MANIFEST_NAME,
    SUCCESS_NAME,
    sharded_sha_path,
    validate_id,
)
from e2e3d_provider.core.manifest import Manifest
from e2e3d_provider.core.marker import SuccessMarker
from e2e3d_provider.exceptions import ChecksumMismatchError, E2E3DError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.metadata_dump import restore_schema
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.durability.backup import BATCH_BYTES, BATCH_FILES, BackupTarget, batches
from e2e3d_provider.lifecycle.results.published import verify_remote

log = logging.getLogger(__name__)


@dataclass
class RestoreResult:
    """What a restore brought back, what it found already there, and what it refused to replace."""

    backup_id: str
    covers_until: str
    objects: int = 0  # in the backup (of the job, with ``job_id``)
    restored_objects: int = 0
    restored_bytes: int = 0
    identical_objects: int = 0
    conflicts: list[str] = field(default_factory=list)  # bucket/key that exist and differ, left as they are
    replaced: list[str] = field(default_factory=list)  # with overwrite: those replaced
    withheld: list[str] = field(default_factory=list)  # SUCCESS markers not restored: their set is not whole
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def row_conflicts(self) -> int:
        return sum(t["conflicts"] for t in self.rows.values())

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "conflicts": self.conflicts[:50], "replaced": self.replaced[:50],
                "withheld": self.withheld[:50]}  # fmt: skip


def run_restore(
    target: BackupTarget,
    live: StorageHook,
    metadata: MetadataHook,
    spool: Path,
    *,
    backup_id: str | None = None,
    job_id: str | None = None,
    overwrite: bool = False,
    schema: bool = True,
    objects: bool = True,
    dry_run: bool = False,
) -> RestoreResult:
    """Restore from ``backup_id`` (default: the latest complete backup) into the live buckets (``live``
    creates any that are missing) and the metadata schema; with ``job_id`` only that job's results,
    archive copies and rows. See the module for what is replaced."""
    started = time.monotonic()
    snapshot = target.snapshot(backup_id)
    entries = target.catalog(snapshot)
    if job_id is not None:
        prefix = validate_id(job_id, "job_id") + "/"
        entries = [e for e in entries if e.bucket in (BUCKET_OUTPUT, BUCKET_ARCHIVE) and e.key.startswith(prefix)]
    result = RestoreResult(snapshot.backup_id, snapshot.covers_until, objects=len(entries))
    spool = spool / f"restore-{snapshot.backup_id}"
    spool.mkdir(parents=True, exist_ok=True)
    try:
        if schema:
            dump = spool / DUMP_NAME
            target.storage.download_file(
                target.bucket, snapshot_key(snapshot.backup_id, DUMP_NAME), dump, sha256=snapshot.dump_sha256
            )
            result.rows = restore_schema(metadata, dump, job_id=job_id, overwrite=overwrite, dry_run=dry_run)
            if job_id is None and not dry_run:  # the dump holds this backup as running: it completed
                metadata.finish_backup(
                    snapshot.backup_id, target.describe(), "complete", objects=snapshot.objects,
                    bytes=snapshot.bytes, covers_until=snapshot.covers_until,
                )  # fmt: skip
        if objects and dry_run:
            _restore_objects(target, live, spool, entries, job_id, overwrite, result, dry_run=True)
        elif objects:
            try:
                _restore_objects(target, live, spool, entries, job_id, overwrite, result)
            finally:  # what it wrote, counted afresh (the schema's restore brings no usage rows)
                metadata.record_usage(live.recount_touched())
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    result.seconds = time.monotonic() - started
    log.info(
        "restore from %s: %d objects restored (%d bytes), %d already there, %d conflicts; rows %s; %.1f s",
        snapshot.backup_id, result.restored_objects, result.restored_bytes, result.identical_objects,
        len(result.conflicts), result.rows, result.seconds,
    )  # fmt: skip
    return result


def _restore_objects(
    target: BackupTarget,
    live: StorageHook,
    spool: Path,
    entries: list[CatalogEntry],
    job_id: str | None,
    overwrite: bool,
    result: RestoreResult,
    *,
    dry_run: bool = False,
) -> None:
    buckets = sorted({e.bucket for e in entries})
    missing = [b for b in buckets if not live.bucket_exists(b)]
    if missing and not dry_run:
        live.bootstrap(buckets=tuple(b for b in DEFAULT_BUCKETS if b in missing) or tuple(missing))
    todo: list[CatalogEntry] = []
    for bucket in buckets:
        absent = dry_run and bucket in missing  # a bucket the restore would create holds nothing yet
        listed = {} if absent else {o.key: o for o in live.list_objects(bucket, f"{job_id}/" if job_id else "")}
        for entry in (e for e in entries if e.bucket == bucket):
            found = listed.get(entry.key)
            if found is None:
                todo.append(entry)
            elif found.size == entry.size and (
                (entry.etag and found.etag == entry.etag) or live.read_sha256(bucket, entry.key) == entry.sha256
            ):
                result.identical_objects += 1
            elif overwrite:
                todo.append(entry)
                result.replaced.append(f"{bucket}/{entry.key}")
            else:
                result.conflicts.append(f"{bucket}/{entry.key}")
    if dry_run:
        result.restored_objects, result.restored_bytes = len(todo), sum(e.size for e in todo)
        return
    markers = [e for e in todo if e.key.rsplit("/", 1)[-1] == SUCCESS_NAME]
    rest = [e for e in todo if e.key.rsplit("/", 1)[-1] != SUCCESS_NAME]
    for batch in batches(rest, lambda entry: entry.size, BATCH_FILES, BATCH_BYTES):
        _restore_batch(target, live, spool, batch, result)
    with ThreadPoolExecutor(max_workers=16) as pool:  # markers last, each only over a whole set
        whole = list(pool.map(lambda m: _whole(target, live, m, result), markers))
        vouched = [m for m, ok in zip(markers, whole, strict=True) if ok]
    for batch in batches(vouched, lambda entry: entry.size, BATCH_FILES, BATCH_BYTES):
        _restore_batch(target, live, spool, batch, result)


def _whole(target: BackupTarget, live: StorageHook, marker: CatalogEntry, result: RestoreResult) -> bool:
    """True if the live set below a SUCCESS marker about to be restored is the one it vouches for: no object
    of it was kept as a conflict, its manifest is the one the marker names, every file matches the manifest.
    Otherwise the marker is withheld (``result.withheld``), so no reader trusts a set that is not whole."""
    prefix = marker.key[: -len(SUCCESS_NAME)]
    reason = "objects below it differ from the backup and were kept"
    if not any(c.startswith(f"{marker.bucket}/{prefix}") for c in result.conflicts):
        try:
            body = target.storage.get_bytes(target.bucket, backup_blob_key(marker.sha256))
            raw = live.get_bytes(marker.bucket, prefix + MANIFEST_NAME)
            if not SuccessMarker.parse(body).names_manifest(raw):
                raise ChecksumMismatchError(f"{prefix}{MANIFEST_NAME} is not the manifest SUCCESS names")
            verify_remote(live, marker.bucket, prefix, Manifest.from_json(raw))
            return True
        except (E2E3DError, ValueError, KeyError, TypeError) as err:
            reason = str(err)
    log.error("restore: %s/%s withheld: %s", marker.bucket, marker.key, reason)
    result.withheld.append(f"{marker.bucket}/{marker.key}: {reason}")
    return False


def _restore_batch(
    target: BackupTarget, live: StorageHook, spool: Path, batch: list[CatalogEntry], result: RestoreResult
) -> None:
    """Fetch the batch's contents from the target (each checked against its SHA-256), then write them
    to their live keys."""
    folder = spool / "blobs"
    contents = {e.sha256: e.size for e in batch}
    target.storage.download_prefix(
        target.bucket,
        BLOB_AREA + "/",
        folder,
        expected={sharded_sha_path(sha): (size, sha) for sha, size in contents.items()},
    )
    for bucket in sorted({e.bucket for e in batch}):
        mine = [e for e in batch if e.bucket == bucket]
        sent = live.upload_objects(
            bucket,
            [(e.key, folder / e.sha256[:2] / e.sha256) for e in mine],
            checksums={e.key: e.sha256 for e in mine},
        )
        result.restored_objects += sent.files
        result.restored_bytes += sent.bytes
    shutil.rmtree(folder, ignore_errors=True)
