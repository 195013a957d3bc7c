"""Parallel, checksummed, retried transfers between a local directory and a bucket prefix.

Used by :class:`~e2e3d_provider.hooks.storage.StorageHook`; it works on a ``minio.Minio``
client and never opens connections itself.

Upload of one file: hash it (streamed), ``HEAD`` the key; an object whose stored
``sha256`` and size equal the local file is skipped, anything else is (re)sent through a
reader that hashes the bytes as they go out; if those differ from the first hash the file
changed mid-upload and the object is removed. Download of one object: a local file whose
size and sha256 already match is kept (read-through cache); otherwise the bytes go to a
temporary name in the target folder, are checked against the stored sha256 (or the MD5
ETag of single-part objects) and only then renamed to the final name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

from minio import Minio
from minio.error import S3Error

from e2e3d_provider.core.layout import key_relpath, local_path_for, validate_relpath
from e2e3d_provider.core.manifest import CHUNK_SIZE, HashingReader, raise_unreadable, sha256_file
from e2e3d_provider.core.retry import DEFAULT_RETRY, RetryPolicy
from e2e3d_provider.exceptions import ChecksumMismatchError, SourceChangedError, TransferError

log = logging.getLogger(__name__)

SHA256_META = "sha256"
PARTIAL_SUFFIX = ".e2e3d-partial"
DEFAULT_PART_SIZE = 16 * 1024 * 1024
DEFAULT_WORKERS = 8
PROGRESS_INTERVAL_SECONDS = 5.0

T = TypeVar("T")
Translate = Callable[[BaseException, str], BaseException]


@dataclass
class TransferResult:
    """What one transfer moved: files and bytes sent, files and bytes skipped, wall seconds."""

    direction: str
    bucket: str
    prefix: str
    files: int = 0
    bytes: int = 0
    skipped_files: int = 0
    skipped_bytes: int = 0
    seconds: float = 0.0
    removed_files: int = 0
    keys: list[str] = field(default_factory=list, repr=False)

    @property
    def total_files(self) -> int:
        return self.files + self.skipped_files

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A small JSON-safe summary (no per-file lists) for XCom, logs and PostgreSQL."""
        data = asdict(self)
        data.pop("keys")
        data["seconds"] = round(self.seconds, 3)
        data["mb_per_s"] = round(self.mb_per_s, 2)
        return data


@dataclass(frozen=True)
class RemoteObject:
    """What a listing or ``HEAD`` says of one object."""

    key: str
    size: int
    etag: str | None = None
    sha256: str | None = None
    version_id: str | None = None
    last_modified: datetime | None = None


class Progress:
    """Thread-safe counter that logs files done/total, MB and MB/s every few seconds."""

    def __init__(
        self, label: str, total_files: int, total_bytes: int, interval: float = PROGRESS_INTERVAL_SECONDS
    ) -> None:
        self.label = label
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.interval = interval
        self.files = 0
        self.bytes = 0
        self.started = time.monotonic()
        self._last_log = self.started
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.files += 1
            self.bytes += nbytes
            now = time.monotonic()
            if now - self._last_log >= self.interval:
                self._last_log = now
                self._log(now)

    def finish(self) -> float:
        now = time.monotonic()
        self._log(now)
        return now - self.started

    def _log(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        log.info(
            "%s: %d/%d files, %.1f/%.1f MB, %.1f MB/s",
            self.label,
            self.files,
            self.total_files,
            self.bytes / 1e6,
            self.total_bytes / 1e6,
            self.bytes / 1e6 / elapsed,
        )


def run_parallel(
    items: Iterable[T], work: Callable[[T], Any], workers: int, name: Callable[[T], str], translate: Translate
) -> list[Any]:
    """Run ``work`` over ``items`` on a bounded pool; on failure stop queueing new items, let running
    ones finish, and raise the translated error (or a :class:`TransferError` listing several)."""
    items = list(items)
    results: list[Any] = []
    failures: dict[str, BaseException] = {}
    with ThreadPoolExecutor(
        max_workers=max(1, min(workers, len(items) or 1)), thread_name_prefix="e2e3d-transfer"
    ) as pool:
        futures = {pool.submit(work, item): name(item) for item in items}
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in list(done) + [f for f in pending if not f.cancelled()]:
            try:
                results.append(future.result())
            except BaseException as err:
                failures[futures[future]] = translate(err, futures[future])
    if failures:
        errors = list(failures.values())
        if len(errors) == 1 or all(type(e) is type(errors[0]) and str(e) == str(errors[0]) for e in errors):
            raise errors[0]
        shown = "; ".join(f"{key}: {err}" for key, err in list(failures.items())[:5])
        more = f" (+{len(failures) - 5} more)" if len(failures) > 5 else ""
        raise TransferError(f"{len(failures)} of {len(items)} transfers failed: {shown}{more}", failures)
    return results


# ---------------------------------------------------------------------------------------
# Object metadata
# ---------------------------------------------------------------------------------------


def stat_remote(client: Minio, bucket: str, key: str) -> RemoteObject | None:
    """Return what ``HEAD`` says of an object, or ``None`` if there is no such object."""
    try:
        stat = client.stat_object(bucket, key)
    except S3Error as err:
        if err.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
            return None
        raise
    meta = stat.metadata or {}
    sha = meta.get(f"x-amz-meta-{SHA256_META}")
    return RemoteObject(
        key=key,
        size=int(stat.size or 0),
        etag=(stat.etag or "").strip('"') or None,
        sha256=sha.lower() if sha else None,
        version_id=stat.version_id,
        last_modified=stat.last_modified,
    )


def list_remote(client: Minio, bucket: str, prefix: str) -> list[RemoteObject]:
    """List every object below ``prefix`` (recursively), without folder placeholders."""
    return [
        RemoteObject(
            key=obj.object_name,
            size=int(obj.size or 0),
            etag=(obj.etag or "").strip('"') or None,
            last_modified=obj.last_modified,
        )
        for obj in client.list_objects(bucket, prefix=prefix, recursive=True)
        if obj.object_name and not obj.object_name.endswith("/") and not obj.is_dir
    ]


def _simple_md5_etag(etag: str | None) -> str | None:
    """The ETag if it is a plain MD5 (single-part upload), else None."""
    if etag and len(etag) == 32 and all(c in "0123456789abcdef" for c in etag.lower()):
        return etag.lower()
    return None


# ---------------------------------------------------------------------------------------
# Upload
# ---------------------------------------------------------------------------------------


_UNKNOWN: Any = object()


def upload_file(
    client: Minio,
    bucket: str,
    key: str,
    path: Path,
    *,
    part_size: int = DEFAULT_PART_SIZE,
    part_workers: int = 2,
    metadata: dict[str, str] | None = None,
    content_type: str = "application/octet-stream",
    sha256: str | None = None,
    listed: RemoteObject | None = _UNKNOWN,
) -> tuple[bool, int]:
    """Upload one file unless the object already holds the same bytes.

    ``listed`` is what a listing of the prefix said of the key (``None``: absent); given, it saves
    the ``HEAD`` for keys that are absent or differ in size. Returns ``(sent, size)``. The object
    carries the file's SHA-256 as ``x-amz-meta-sha256``.
    """
    size = path.stat().st_size
    sha256 = sha256 or sha256_file(path)
    if listed is _UNKNOWN or (listed is not None and listed.size == size):
        existing = stat_remote(client, bucket, key)  # same size: only the stored sha256 can tell
    else:
        existing = listed
    if existing is not None and existing.sha256 == sha256 and existing.size == size:
        log.debug("skip %s/%s: identical (sha256 %s)", bucket, key, sha256[:12])
        return False, size
    if existing is not None:
        log.info("replace %s/%s: stored object differs from %s", bucket, key, path)
    meta: dict[str, str | list[str] | tuple[str]] = {SHA256_META: sha256, **(metadata or {})}
    with open(path, "rb") as handle:
        reader = HashingReader(handle)
        client.put_object(
            bucket,
            key,
            cast(BinaryIO, reader),  # put_object only calls read(), which HashingReader hashes
            length=size,
            part_size=max(part_size, 5 * 1024 * 1024),
            metadata=meta,
            content_type=content_type,
            num_parallel_uploads=part_workers,
        )
    if reader.sha256.hexdigest() != sha256 or reader.bytes_read != size:
        client.remove_object(bucket, key)
        raise SourceChangedError(
            f"{path} changed while it was uploaded to {bucket}/{key}; the object was "
            "removed. Make sure nothing writes the file during the upload, then rerun."
        )
    # Transit integrity needs no extra hash here: over http the SDK signs the payload's SHA-256
    # (SigV4), which the server checks; over https TLS protects it.
    return True, size


def iter_local_files(local_dir: Path) -> list[tuple[str, Path]]:
    """Every regular file below ``local_dir`` as ``(relpath, path)``, sorted; partial downloads and
    symlinks leaving the directory are left out."""
    root = local_dir.resolve()
    found: list[tuple[str, Path]] = []
    if not root.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(root, onerror=raise_unreadable):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(PARTIAL_SUFFIX):
                continue
            path = Path(dirpath) / name
            if not path.resolve().is_relative_to(root) or not path.is_file():
                log.warning("skip %s: not a regular file inside %s", path, root)
                continue
            found.append((validate_relpath(path.relative_to(root).as_posix()), path))
    return found


def upload_directory(
    client: Minio,
    bucket: str,
    local_dir: Path,
    prefix: str,
    *,
    translate: Translate,
    files: list[tuple[str, Path]] | None = None,
    workers: int = DEFAULT_WORKERS,
    part_size: int = DEFAULT_PART_SIZE,
    retry: RetryPolicy = DEFAULT_RETRY,
    checksums: dict[str, str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> TransferResult:
    """Upload every file below ``local_dir`` (or the given ``files``) to ``bucket`` under ``prefix``.

    ``on_progress(files_done, files_total)`` is called after each file (from worker threads).
    """
    files = iter_local_files(local_dir) if files is None else files
    checksums = checksums or {}
    # One listing instead of a HEAD per file: absent keys and keys of another size need no HEAD.
    listing = {
        obj.key: obj for obj in retry.call(lambda: list_remote(client, bucket, prefix), f"list {bucket}/{prefix}")
    }
    sizes = {rel: path.stat().st_size for rel, path in files}
    progress = Progress(f"upload {local_dir} -> {bucket}/{prefix}", len(files), sum(sizes.values()))
    result = TransferResult("upload", bucket, prefix)
    lock = threading.Lock()

    def one(item: tuple[str, Path]) -> None:
        rel, path = item
        key = prefix + rel
        sent, size = retry.call(
            lambda: upload_file(
                client, bucket, key, path, part_size=part_size, sha256=checksums.get(rel), listed=listing.get(key)
            ),
            f"upload {bucket}/{key}",
        )
        with lock:
            if sent:
                result.files += 1
                result.bytes += size
            else:
                result.skipped_files += 1
                result.skipped_bytes += size
            result.keys.append(key)
            done = len(result.keys)
        progress.add(size)
        if on_progress is not None:
            on_progress(done, len(files))

    run_parallel(files, one, workers, lambda item: prefix + item[0], translate)
    result.seconds = progress.finish()
    result.keys.sort()
    return result


# ---------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------


def local_matches(path: Path, remote: RemoteObject, expected_sha256: str | None = None) -> bool:
    """True if ``path`` already holds the object's bytes: size, then ``expected_sha256`` (a manifest's)
    when given, else the object's sha256 label or single-part MD5 ETag."""
    if not path.is_file() or path.stat().st_size != remote.size:
        return False
    if expected_sha256 or remote.sha256:
        return sha256_file(path) == (expected_sha256 or remote.sha256)
    md5 = _simple_md5_etag(remote.etag)
    if md5:
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK_SIZE):
                digest.update(chunk)
        return digest.hexdigest() == md5
    return False


def download_object(
    client: Minio, bucket: str, remote: RemoteObject, dest: Path, *, expected_sha256: str | None = None
) -> int:
    """Stream one object to ``dest`` through a temporary name; verify; rename. Returns bytes written.

    With ``expected_sha256`` (from a manifest) the bytes must have exactly that hash and
    ``remote.size`` bytes, whatever the object's labels say. Without it, the checks use the GET
    response's own headers (size, ``x-amz-meta-sha256``, single-part MD5 ETag), with no extra ``HEAD``;
    an object that carries neither is downloaded with a warning that nothing could verify it.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=PARTIAL_SUFFIX, dir=dest.parent)
    tmp = Path(tmp_name)
    written = 0
    response = None
    try:
        response = client.get_object(bucket, remote.key, version_id=remote.version_id)
        headers = response.headers
        if expected_sha256:
            expected_sha: str | None = expected_sha256.lower()
            expected_size = remote.size
        else:
            expected_sha = (headers.get(f"x-amz-meta-{SHA256_META}") or remote.sha256 or "").lower() or None
            expected_size = int(headers.get("Content-Length", remote.size))
        expected_md5 = None if expected_sha else _simple_md5_etag((headers.get("ETag") or "").strip('"'))
        sha = hashlib.sha256()
        md5 = hashlib.md5(usedforsecurity=False) if expected_md5 else None
        with os.fdopen(fd, "wb") as handle:
            for chunk in response.stream(CHUNK_SIZE):
                handle.write(chunk)
                sha.update(chunk)
                if md5 is not None:
                    md5.update(chunk)
                written += len(chunk)
        # No fsync per file: a cached file is only ever reused after its sha256 matched again, so a
        # file torn by a power cut is refetched, never trusted (and 10,000 fsyncs cost more than the data).
        problem = None
        source = "the manifest" if expected_sha256 else "the object's checksum"
        if written != expected_size:
            problem = f"got {written} bytes, {source} says {expected_size}"
        elif expected_sha and sha.hexdigest() != expected_sha:
            problem = f"sha256 {sha.hexdigest()}, {source} says {expected_sha}"
        elif md5 is not None and md5.hexdigest() != expected_md5:
            problem = f"md5 {md5.hexdigest()} != ETag {expected_md5}"
        if not (expected_sha or md5):
            log.warning("%s/%s has no sha256 label and a multipart ETag: only its size was checked", bucket, remote.key)
        if problem:
            raise ChecksumMismatchError(
                f"{bucket}/{remote.key}: downloaded bytes do not match {source} ({problem}); "
                f"nothing was written to {dest}. "
                + (
                    "The stored object is not the published one: republish the job or restore the object."
                    if expected_sha256
                    else "The stored object is damaged or was replaced without its checksum: re-upload it."
                )
            )
        os.replace(tmp, dest)
        return written
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if response is not None:
            response.close()
            response.release_conn()


def download_prefix(
    client: Minio,
    bucket: str,
    prefix: str,
    local_dir: Path,
    *,
    translate: Translate,
    workers: int = DEFAULT_WORKERS,
    retry: RetryPolicy = DEFAULT_RETRY,
    delete_extraneous: bool = False,
    expected: Mapping[str, tuple[int, str]] | None = None,
) -> TransferResult:
    """Mirror every object below ``prefix`` into ``local_dir``; unchanged local files are kept.

    With ``expected`` (relative path -> (size, sha256), a manifest's files), exactly those files are
    fetched, with no listing, and each is checked against the manifest's sha256 (a local file is kept
    only if its own bytes hash to it): never against the objects' labels, which any writer can set.
    With ``delete_extraneous``, local files that are no longer wanted are removed, so the directory is
    an exact copy (a read-through cache of the prefix).
    """
    if expected is not None:
        planned = [
            (rel, RemoteObject(key=prefix + validate_relpath(rel), size=size)) for rel, (size, _) in expected.items()
        ]
    else:
        listing = retry.call(lambda: list_remote(client, bucket, prefix), f"list {bucket}/{prefix}")
        planned = [(key_relpath(obj.key, prefix), obj) for obj in listing]  # rejects hostile keys first
    progress = Progress(f"download {bucket}/{prefix} -> {local_dir}", len(planned), sum(obj.size for _, obj in planned))
    result = TransferResult("download", bucket, prefix)
    lock = threading.Lock()
    local_dir.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[str, RemoteObject]) -> None:
        rel, listed = item
        dest = local_path_for(local_dir, rel)
        remote = listed
        want = expected[rel][1] if expected is not None else None
        if want is None and dest.is_file() and dest.stat().st_size == listed.size:  # a cache candidate
            remote = (
                retry.call(lambda: stat_remote(client, bucket, listed.key), f"stat {bucket}/{listed.key}") or listed
            )
        if dest.is_file() and local_matches(dest, remote, want):
            with lock:
                result.skipped_files += 1
                result.skipped_bytes += remote.size
        else:
            size = retry.call(
                lambda: download_object(client, bucket, remote, dest, expected_sha256=want),
                f"download {bucket}/{remote.key}",
            )
            with lock:
                result.files += 1
                result.bytes += size
        with lock:
            result.keys.append(remote.key)
        progress.add(remote.size)

    run_parallel(planned, one, workers, lambda item: item[1].key, translate)
    if delete_extraneous:
        wanted = {rel for rel, _ in planned}
        for rel, path in iter_local_files(local_dir):
            if rel not in wanted:
                path.unlink()
                result.removed_files += 1
    result.seconds = progress.finish()
    result.keys.sort()
    return result
