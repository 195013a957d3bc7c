"""Incremental backups of the metadata schema and the buckets' current objects to a backup target.

A backup (``core/backup_catalog.py`` has the target's layout):

1. records itself as running in ``e2e3d.backups``;
2. dumps the ``e2e3d`` schema (``pg_dump``, one consistent snapshot: the backup's point in time);
3. lists every bucket, and decides what changed from the listings, the previous backup's catalog and
   the manifests, never by re-reading what did not change: an object with the size and ETag the last
   backup saw keeps its SHA-256; a published result's or an archived run's SHA-256 is its manifest's; an
   input image's is its content-addressed key. Content the target already holds is not sent again;
4. copies the rest (read once from the source, checked against its manifest's SHA-256 where there is
   one, else against its ETag, and hashed), each content once, to ``blobs/<sha256>``;
5. writes the catalog, then ``COMPLETE``: until then the snapshot does not exist for a restore, so a
   failed or interrupted backup leaves every earlier one as it was; its rerun sends only what is missing.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from e2e3d_provider.core.backup_catalog import (
    BLOB_AREA,
    CATALOG_NAME,
    COMPLETE_NAME,
    DEFAULT_BACKUP_BUCKET,
    DUMP_NAME,
    PARTIAL_CATALOG_NAME,
    SNAPSHOT_AREA,
    CatalogEntry,
    Snapshot,
    backup_blob_key,
    decode_catalog,
    encode_catalog,
    make_backup_id,
    snapshot_key,
    validate_backup_id,
)
from e2e3d_provider.core.layout import (
    BLOB_AREA as INPUT_BLOB_AREA,
)
from e2e3d_provider.core.layout import (
    BUCKET_ARCHIVE,
    BUCKET_INPUT,
    BUCKET_OUTPUT,
    DEFAULT_BUCKETS,
    WORK_AREA,
)
from e2e3d_provider.core.manifest import Manifest, sha256_file
from e2e3d_provider.exceptions import (
    ChecksumMismatchError,
    E2E3DError,
    ManifestError,
    ObjectNotFoundError,
    StorageError,
    TransferError,
)
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.metadata_dump import dump_schema
from e2e3d_provider.hooks.metadata_schema import SCHEMA_VERSION
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.results.published import read_published

log = logging.getLogger(__name__)
T = TypeVar("T")

#: objects fetched to the spool folder before they go on to the target (bounds its disk use)
BATCH_FILES = 2000
BATCH_BYTES = 1 << 30


class BackupError(E2E3DError):
    """A backup could not complete; the earlier backups are intact."""


@dataclass
class BackupTarget:
    """Where backups go: one bucket on the ``e2e3d_backup`` connection's S3 endpoint."""

    storage: StorageHook
    bucket: str = DEFAULT_BACKUP_BUCKET

    @classmethod
    def from_hook(cls, storage: StorageHook) -> BackupTarget:
        """The target a connection names (its extra ``bucket``, default ``e2e3d-backup``)."""
        return cls(storage, storage.settings.bucket or DEFAULT_BACKUP_BUCKET)

    @classmethod
    def optional(cls, conn_id: str) -> BackupTarget | None:
        """The target of ``conn_id`` if it is defined and reachable, else None (logged): a scrub then repairs
        from earlier versions and the archive only."""
        try:
            target = cls.from_hook(StorageHook(conn_id))
            target.complete_ids()
        except E2E3DError as err:
            log.warning("no backup target to repair from (%s); earlier versions and the archive only", err)
            return None
        return target

    def describe(self) -> str:
        return f"{self.storage.endpoint_url}/{self.bucket} (connection {self.storage.minio_conn_id!r})"

    def ensure(self) -> None:
        """Create the target bucket if missing (no versioning: nothing in it is ever overwritten)."""
        self.storage.bootstrap(buckets=(self.bucket,), versioned=())

    def complete_ids(self) -> list[str]:
        """The ids of the backups that completed (``COMPLETE`` written), oldest first."""
        if not self.storage.bucket_exists(self.bucket):
            return []
        keys = self.storage.list_keys(self.bucket, SNAPSHOT_AREA + "/")
        return sorted(k.split("/")[1] for k in keys if k.endswith("/" + COMPLETE_NAME))

    def snapshot(self, backup_id: str | None = None) -> Snapshot:
        """The ``COMPLETE`` record of ``backup_id`` (default: the latest complete backup)."""
        ids = self.complete_ids()
        if backup_id is None:
            if not ids:
                raise ObjectNotFoundError(f"no complete backup at {self.describe()}: run `e2e3d backup` first")
            backup_id = ids[-1]
        elif validate_backup_id(backup_id) not in ids:
            raise ObjectNotFoundError(
                f"no complete backup {backup_id} at {self.describe()} (complete: {', '.join(ids[-5:]) or 'none'})"
            )
        return Snapshot.from_json(self.storage.get_bytes(self.bucket, snapshot_key(backup_id, COMPLETE_NAME)))

    def catalog(self, snapshot: Snapshot) -> list[CatalogEntry]:
        """The verified catalog of a backup."""
        raw = self.storage.get_bytes(self.bucket, snapshot_key(snapshot.backup_id, CATALOG_NAME), max_bytes=1 << 32)
        if hashlib.sha256(raw).hexdigest() != snapshot.catalog_sha256:
            raise ChecksumMismatchError(f"backup {snapshot.backup_id}: its catalog is not the one COMPLETE names")
        return decode_catalog(raw)

    def previous_entries(self) -> dict[tuple[str, str], CatalogEntry]:
        """(bucket, key) -> entry of the latest complete backup, overlaid with what the interrupted backups
        since then stored (their partial catalogs): what a new backup need not read again."""
        if not self.storage.bucket_exists(self.bucket):
            return {}
        keys = self.storage.list_keys(self.bucket, SNAPSHOT_AREA + "/")
        complete = sorted(k.split("/")[1] for k in keys if k.endswith("/" + COMPLETE_NAME))
        entries: dict[tuple[str, str], CatalogEntry] = {}
        if complete:
            try:
                entries = {(e.bucket, e.key): e for e in self.catalog(self.snapshot(complete[-1]))}
            except (ChecksumMismatchError, ManifestError) as err:  # never a reason to stop backing up
                log.error("backup: the last backup's catalog is unreadable (%s); every object is read again", err)
        for key in sorted(k for k in keys if k.endswith("/" + PARTIAL_CATALOG_NAME)):
            if not complete or key.split("/")[1] > complete[-1]:
                raw = self.storage.get_bytes(self.bucket, key, max_bytes=1 << 32)
                entries.update({(e.bucket, e.key): e for e in decode_catalog(raw)})
        return entries

    def blobs(self) -> dict[str, int]:
        """sha256 -> size of every content the target holds (one listing)."""
        if not self.storage.bucket_exists(self.bucket):
            return {}
        return {o.key.rsplit("/", 1)[1]: o.size for o in self.storage.list_objects(self.bucket, BLOB_AREA + "/")}


@dataclass
class BackupResult:
    """What one backup covered and what it sent."""

    backup_id: str
    target: str
    covers_until: str
    objects: int = 0
    bytes: int = 0
    sent_objects: int = 0
    sent_bytes: int = 0
    read_objects: int = 0  # source objects read (the rest were decided from listings and manifests)
    seconds: float = 0.0
    damaged: list[str] = field(default_factory=list)  # source objects whose bytes are not their manifest's

    def to_xcom(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "damaged"} | {"damaged": self.damaged[:20]}


@dataclass
class _Pending:
    bucket: str
    key: str
    size: int
    etag: str | None
    sha256: str | None  # from a manifest or a content-addressed key; None: learnt by reading


class _Manifests:
    """The SHA-256 a manifest gives a result or archived object (each manifest read once, only if needed)."""

    def __init__(self, source: StorageHook) -> None:
        self.source = source
        self._read: dict[tuple[str, str], dict[str, tuple[int, str]] | None] = {}

    def sha_of(self, bucket: str, key: str) -> tuple[int, str] | None:
        if bucket == BUCKET_INPUT and key.startswith(INPUT_BLOB_AREA + "/"):
            sha = key.rsplit("/", 1)[1]
            return (-1, sha) if len(sha) == 64 else None
        parts = key.split("/")
        if bucket == BUCKET_OUTPUT and len(parts) > 1:
            job, prefix = parts[0], parts[0] + "/"
        elif bucket == BUCKET_ARCHIVE and len(parts) > 2:
            job, prefix = parts[0], "/".join(parts[:2]) + "/"
        else:
            return None
        if (bucket, prefix) not in self._read:
            self._read[(bucket, prefix)] = self._load(bucket, job, prefix)
        files = self._read[(bucket, prefix)]
        return files.get(key[len(prefix) :]) if files else None

    def _load(self, bucket: str, job: str, prefix: str) -> dict[str, tuple[int, str]] | None:
        try:
            manifest: Manifest = read_published(self.source, bucket, job, prefix).manifest
        except (ObjectNotFoundError, ChecksumMismatchError, ValueError):
            return None  # not published (or not verifiable): its objects are hashed as they are read
        return {e.path: (e.size, e.sha256) for e in manifest.files}


def run_backup(
    source: StorageHook,
    target: BackupTarget,
    metadata: MetadataHook,
    spool: Path,
    *,
    buckets: tuple[str, ...] = DEFAULT_BUCKETS,
    on_batch: Callable[[int, int], None] | None = None,
) -> BackupResult:
    """Back up the schema and the buckets' current objects to ``target``, incrementally; see the module.
    ``spool`` is a local folder for objects in passage (emptied as they go). ``on_batch(done, total)``
    follows each batch of copied objects. Raises BackupError (recorded as failed) if anything fails."""
    backup_id = make_backup_id()
    started = time.monotonic()
    what = target.describe()
    metadata.start_backup(backup_id, what)
    result = BackupResult(backup_id, what, "")
    spool = spool / f"backup-{backup_id}"
    entries: list[CatalogEntry] = []
    try:
        _back_up(source, target, metadata, spool, buckets, result, entries, on_batch)
    except Exception as err:
        result.seconds = time.monotonic() - started
        _leave_partial(target, backup_id, entries)
        metadata.finish_backup(backup_id, what, "failed", error=str(err)[:2000], seconds=result.seconds)
        earlier = "earlier backups are untouched"
        try:
            ids = target.complete_ids()
            earlier = f"the last complete backup ({ids[-1]}) is intact" if ids else earlier
        except StorageError:
            pass  # the target is what failed: nothing on it was changed either way
        raise BackupError(
            f"backup {backup_id} to {what} failed: {err}. Nothing was marked complete; {earlier}; "
            "a rerun sends only what is missing."
        ) from err
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    result.seconds = time.monotonic() - started
    metadata.finish_backup(
        backup_id, what, "complete", objects=result.objects, bytes=result.bytes, sent_objects=result.sent_objects,
        sent_bytes=result.sent_bytes, seconds=result.seconds, covers_until=result.covers_until,
    )  # fmt: skip
    log.info(
        "backup %s: %d objects (%d bytes), %d sent (%d bytes), %d read, in %.1f s",
        backup_id, result.objects, result.bytes, result.sent_objects, result.sent_bytes, result.read_objects,
        result.seconds,
    )  # fmt: skip
    return result


def _back_up(
    source: StorageHook,
    target: BackupTarget,
    metadata: MetadataHook,
    spool: Path,
    buckets: tuple[str, ...],
    result: BackupResult,
    entries: list[CatalogEntry],
    on_batch: Callable[[int, int], None] | None,
) -> None:
    target.ensure()
    previous = target.previous_entries()
    spool.mkdir(parents=True, exist_ok=True)
    dump = spool / DUMP_NAME
    result.covers_until = datetime.now(UTC).isoformat(timespec="seconds")  # pg_dump's snapshot is taken after this
    dump_schema(metadata, dump)
    dump_sha = sha256_file(dump)
    target.storage.upload_objects(target.bucket, [(snapshot_key(result.backup_id, DUMP_NAME), dump)], checksums={})
    stored = target.blobs()
    manifests = _Manifests(source)
    pending: list[_Pending] = []
    for bucket in buckets:
        if not source.bucket_exists(bucket):
            continue
        for obj in source.list_objects(bucket):
            if bucket == BUCKET_OUTPUT and obj.key.startswith(WORK_AREA + "/"):
                continue  # hand-offs in flight: a run's working state, published or dropped soon
            seen = previous.get((bucket, obj.key))
            if seen and seen.size == obj.size and seen.etag == obj.etag and seen.sha256 in stored:
                entries.append(seen)  # unchanged since the last backup, and its content is there
                continue
            known = manifests.sha_of(bucket, obj.key)
            if known and known[0] not in (-1, obj.size):  # its manifest says another size: damaged
                log.error("backup: %s/%s is %d bytes, its manifest says %d: not backed up", bucket, obj.key,
                          obj.size, known[0])  # fmt: skip
                result.damaged.append(f"{bucket}/{obj.key}")
                if seen and seen.sha256 == known[1]:
                    entries.append(seen)  # an earlier backup's good copy stays named
                continue
            sha = known[1] if known else None
            if sha is not None and stored.get(sha) == obj.size:
                entries.append(CatalogEntry(bucket, obj.key, obj.size, sha, obj.etag))  # the target holds it
            else:
                pending.append(_Pending(bucket, obj.key, obj.size, obj.etag, sha))
    done = 0
    for batch in batches(pending, lambda item: item.size, BATCH_FILES, BATCH_BYTES):
        for item, sha in _copy_batch(source, target, spool, batch, stored, result):
            if sha is None:  # its bytes are not its manifest's: an earlier backup's good copy stays named
                seen = previous.get((item.bucket, item.key))
                if seen and seen.sha256 == item.sha256:
                    entries.append(seen)
                continue
            entries.append(CatalogEntry(item.bucket, item.key, item.size, sha, item.etag))
        done += len(batch)
        if on_batch is not None:
            on_batch(done, len(pending))
    catalog = encode_catalog(entries)
    result.objects, result.bytes = len(entries), sum(e.size for e in entries)
    (spool / CATALOG_NAME).write_bytes(catalog)
    target.storage.upload_objects(
        target.bucket, [(snapshot_key(result.backup_id, CATALOG_NAME), spool / CATALOG_NAME)], checksums={}
    )
    snapshot = Snapshot(
        result.backup_id, result.backup_id, datetime.now(UTC).isoformat(timespec="seconds"), result.covers_until,
        result.objects, result.bytes, hashlib.sha256(catalog).hexdigest(), dump_sha, SCHEMA_VERSION,
    )  # fmt: skip
    target.storage.put_bytes(
        target.bucket, snapshot_key(result.backup_id, COMPLETE_NAME), snapshot.to_json(), "application/json"
    )  # last: from here on the backup exists


def _leave_partial(target: BackupTarget, backup_id: str, entries: list[CatalogEntry]) -> None:
    """What a failed backup stored, for its rerun to start from (best effort: the target may be what failed)."""
    if not entries:
        return
    try:
        target.storage.put_bytes(target.bucket, snapshot_key(backup_id, PARTIAL_CATALOG_NAME), encode_catalog(entries))
    except Exception as err:
        log.warning("backup %s: its partial catalog could not be left for the rerun: %s", backup_id, err)


def batches(items: list[T], size: Callable[[T], int], max_files: int, max_bytes: int) -> list[list[T]]:
    """``items`` in order, cut into runs of at most ``max_files`` and (unless one item is larger) ``max_bytes``."""
    runs: list[list[T]] = [[]]
    total = 0
    for item in items:
        if runs[-1] and (len(runs[-1]) >= max_files or total + size(item) > max_bytes):
            runs.append([])
            total = 0
        runs[-1].append(item)
        total += size(item)
    return [run for run in runs if run]


def _copy_batch(
    source: StorageHook,
    target: BackupTarget,
    spool: Path,
    batch: list[_Pending],
    stored: dict[str, int],
    result: BackupResult,
) -> list[tuple[_Pending, str | None]]:
    """Fetch a batch from the source, check and hash it, send the contents the target lacks; returns each
    item with its SHA-256, or None where the bytes are not the manifest's."""
    outcome: list[tuple[_Pending, str | None]] = []
    sends: dict[str, Path] = {}
    for bucket in sorted({item.bucket for item in batch}):
        items = [item for item in batch if item.bucket == bucket]
        folder = spool / "objects" / bucket
        for item, path in _fetch(source, bucket, items, folder, result):
            if path is None:
                outcome.append((item, None))
                continue
            sha = item.sha256 or sha256_file(path)  # a known sha256 was checked as the bytes came in
            outcome.append((item, sha))
            if sha not in stored and sha not in sends:
                sends[sha] = path
    if sends:
        sent = target.storage.upload_objects(
            target.bucket,
            [(backup_blob_key(sha), path) for sha, path in sends.items()],
            checksums={backup_blob_key(sha): sha for sha in sends},
        )
        result.sent_objects += sent.files
        result.sent_bytes += sent.bytes
        for sha, path in sends.items():
            stored[sha] = path.stat().st_size
    shutil.rmtree(spool / "objects", ignore_errors=True)
    return outcome


def _fetch(
    source: StorageHook, bucket: str, items: list[_Pending], folder: Path, result: BackupResult
) -> list[tuple[_Pending, Path | None]]:
    """Download ``items`` into ``folder``, each checked against its manifest's SHA-256 (else its ETag).
    One parallel transfer; if some object's bytes are not its manifest's, each is fetched on its own so
    the rest still back up, and those are reported as damaged (left out of this backup)."""
    expected = {item.key: (item.size, item.sha256 or "") for item in items}
    try:
        source.download_prefix(bucket, "", folder, expected=expected)
        result.read_objects += len(items)
        return [(item, folder / item.key) for item in items]
    except (ChecksumMismatchError, TransferError) as err:
        failures = getattr(err, "failures", {})
        if not isinstance(err, ChecksumMismatchError) and not all(
            isinstance(e, ChecksumMismatchError) for e in failures.values()
        ):
            raise

    def one(item: _Pending) -> tuple[_Pending, Path | None]:
        dest = folder / item.key
        try:
            source.download_file(bucket, item.key, dest, sha256=item.sha256, size=item.size)
        except ChecksumMismatchError as err:
            log.error("backup: %s/%s is damaged, not backed up: %s", bucket, item.key, err)
            result.damaged.append(f"{bucket}/{item.key}")
            return item, None
        return item, dest

    with ThreadPoolExecutor(max_workers=8) as pool:
        fetched = list(pool.map(one, items))
    result.read_objects += len(items)
    return fetched
