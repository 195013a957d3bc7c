"""The backup target's layout and its catalog: what one backup holds, and where.

A backup target is one bucket (on a second S3 endpoint, or beside the live buckets on the same one):

* ``blobs/<2 hex>/<sha256>``: each distinct object content once, named by its SHA-256 and never
  overwritten, so a new backup only adds what no earlier one holds and never touches an older one;
* ``snapshots/<backup id>/metadata.dump``: the ``e2e3d`` schema, ``pg_dump`` custom format;
* ``snapshots/<backup id>/catalog.jsonl.gz``: every backed-up object (bucket, key, size, sha256, ETag);
* ``snapshots/<backup id>/partial.jsonl.gz``: left by a backup that failed, naming what it had stored;
* ``snapshots/<backup id>/COMPLETE``: written last, naming the catalog's and the dump's SHA-256. A
  snapshot without it is an interrupted backup, and is never restored from.
"""

from __future__ import annotations

import builtins
import gzip
import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from e2e3d_provider.core.layout import sharded_sha_key, validate_project_key, validate_sha256
from e2e3d_provider.exceptions import InvalidNameError, ManifestError

BLOB_AREA = "blobs"
SNAPSHOT_AREA = "snapshots"
DUMP_NAME = "metadata.dump"
CATALOG_NAME = "catalog.jsonl.gz"
#: what an interrupted backup had stored (same format); its rerun reads none of those objects again
PARTIAL_CATALOG_NAME = "partial.jsonl.gz"
COMPLETE_NAME = "COMPLETE"
#: the backup bucket of a target connection that names none (extra ``bucket``)
DEFAULT_BACKUP_BUCKET = "e2e3d-backup"
BACKUP_ID_PATTERN = re.compile(r"\d{8}T\d{6}\.\d{6}Z")


def make_backup_id(when: datetime | None = None) -> str:
    """A backup's id: its start in UTC to the microsecond (``YYYYMMDDTHHMMSS.ffffffZ``); ids sort by time."""
    return (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def validate_backup_id(value: object) -> str:
    """Return ``value`` if it is a backup id."""
    if not isinstance(value, str) or not BACKUP_ID_PATTERN.fullmatch(value):
        raise InvalidNameError(f"invalid backup id {value!r}: expected UTC YYYYMMDDTHHMMSS.ffffffZ")
    return value


def backup_blob_key(sha256: str) -> str:
    """``blobs/<2 hex>/<sha256>``: where a target holds one object content."""
    return sharded_sha_key(BLOB_AREA, sha256)


def snapshot_key(backup_id: str, name: str) -> str:
    """``snapshots/<backup id>/<name>``."""
    return f"{SNAPSHOT_AREA}/{validate_backup_id(backup_id)}/{name}"


@dataclass(frozen=True)
class CatalogEntry:
    """One backed-up object: where it lived, and the content (by SHA-256) that restores it."""

    bucket: str
    key: str
    size: int
    sha256: str
    etag: str | None = None


def encode_catalog(entries: list[CatalogEntry]) -> bytes:
    """The catalog file: one JSON object per line, sorted by bucket and key, gzip-compressed."""
    lines = (json.dumps(asdict(e), separators=(",", ":")) for e in sorted(entries, key=lambda e: (e.bucket, e.key)))
    return gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=6, mtime=0)


def decode_catalog(data: bytes) -> list[CatalogEntry]:
    """The entries of a catalog file; a malformed one raises ManifestError, and so does one entry outside
    the project's buckets and key layout (:func:`~e2e3d_provider.core.layout.validate_project_key`): a
    catalog is what a restore writes, and a hand that can write the backup bucket must not steer a restore
    into another bucket (the backup's own included) or a key no component makes."""
    try:
        text = gzip.decompress(data).decode()
        entries = [CatalogEntry(**json.loads(line)) for line in text.splitlines() if line]
    except (OSError, ValueError, TypeError) as err:
        raise ManifestError(f"backup catalog is unreadable: {err}") from err
    for entry in entries:
        try:
            validate_project_key(entry.bucket, entry.key)
            validate_sha256(entry.sha256)
            if not isinstance(entry.size, int) or isinstance(entry.size, bool) or entry.size < 0:
                raise InvalidNameError(f"size {entry.size!r} is not a byte count")
            if entry.etag is not None and not isinstance(entry.etag, str):
                raise InvalidNameError(f"etag {entry.etag!r} is not a string")
        except InvalidNameError as err:
            raise ManifestError(
                f"backup catalog entry {entry.bucket!r}/{entry.key!r} is refused: {err}; nothing is restored "
                "from a catalog that names objects outside the project's buckets and layout"
            ) from err
    return entries


@dataclass(frozen=True)
class Snapshot:
    """The ``COMPLETE`` record of one backup: what it covers and the checksums of its catalog and dump."""

    backup_id: str
    started_at: str
    finished_at: str
    covers_until: str  # the database's state is of this instant (pg_dump's snapshot); objects are as late or later
    objects: int
    bytes: int
    catalog_sha256: str
    dump_sha256: str
    schema_version: int

    def to_json(self) -> builtins.bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: builtins.bytes) -> Snapshot:
        try:
            raw: dict[str, Any] = json.loads(data)
            snapshot = cls(**{k: raw[k] for k in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError) as err:
            raise ManifestError(f"backup COMPLETE record is unreadable: {err}") from err
        validate_backup_id(snapshot.backup_id)
        return snapshot
