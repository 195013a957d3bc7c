"""Parallel, checksummed, retried transfers between a local directory and a bucket prefix.

Used by :class:`~e2e3d_provider.hooks.storage.StorageHook`, which owns the clients: the data path
runs on an ``obstore`` store (Rust ``object_store``), many requests in flight on one asyncio loop,
with file data in memory bounded by a byte budget; listings and HEADs for the rest of the hook
run on its ``minio.Minio`` client. Nothing here opens connections.

Upload: one LIST of the prefix gives every stored size and ETag; each file is read once, hashed
(SHA-256 for the manifest and the object's label, MD5 for the ETag) and sent, or skipped when the
stored object has its size and ETag; the server's answer must carry the ETag of what was sent.
A small object carries its SHA-256 as metadata (``x-amz-meta-sha256``, sent with the bytes); a large
one is streamed before its SHA-256 is known, so the hash goes into an object tag (``sha256``) of the
version just written once the upload is complete.
Download: a local file that gives the stored ETag (or, with a manifest, its sha256) is kept
(read-through cache); otherwise the bytes are checked against the manifest, the sha256 label
(metadata, else tag) or the ETag before they appear under the final name: a small object in memory,
then written into an unnamed file linked under its name; a large one in a temporary name in the target
folder, renamed once checked.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import obstore
from minio import Minio
from minio.commonconfig import Tags
from minio.error import S3Error

from e2e3d_provider.core import etag as etags
from e2e3d_provider.core import event_loop, object_io
from e2e3d_provider.core.layout import key_relpath, local_path_for, validate_relpath
from e2e3d_provider.core.manifest import entries_below, raise_unreadable, sha256_file
from e2e3d_provider.core.object_io import SHA256_META, SMALL_READ_LIMIT
from e2e3d_provider.core.retry import DEFAULT_RETRY, RetryPolicy
from e2e3d_provider.exceptions import ChecksumMismatchError, SourceChangedError, TransferError

log = logging.getLogger(__name__)

__all__ = ["SHA256_META", "Engine", "RemoteObject", "TransferResult"]

PARTIAL_SUFFIX = ".e2e3d-partial"
#: multipart part size; objects up to one part go in one request (and are read whole when fetched)
DEFAULT_PART_SIZE = 8 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's smallest part
MAX_RANGE_SIZE = 64 * 1024 * 1024  # upload parts guessed from an ETag no larger than this (else no ETag check)
#: threads of the hook's thread-pool operations (server-side copies, deletes)
DEFAULT_WORKERS = 8
#: requests in flight at once on the data path
DEFAULT_CONCURRENCY = 64
#: file data held in memory at once by one transfer
DEFAULT_MEMORY_BUDGET = 128 * 1024 * 1024
PROGRESS_INTERVAL_SECONDS = 5.0
#: the object tag that holds a streamed upload's SHA-256 (its metadata was sent before the hash was known)
SHA256_TAG = "sha256"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

T = TypeVar("T")
Translate = Callable[[BaseException, str], BaseException]


def partial_path(dest: Path, token: int) -> Path:
    """The temporary name a download writes ``dest`` under: hidden, in the same folder (so the rename is
    atomic), naming the writing process (so a sweep can tell a dead writer's leftovers from a live one's)."""
    return dest.with_name(f".{dest.name}.{os.getpid()}.{token:x}{PARTIAL_SUFFIX}")


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
    #: relpath -> (size, sha256, stored ETag) of every file an upload handled: what a manifest records
    checksums: dict[str, tuple[int, str, str | None]] = field(default_factory=dict, repr=False)

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
        data.pop("checksums")
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


@dataclass(frozen=True)
class PendingUpload:
    """An incomplete multipart upload: started, never completed or aborted (its parts still take space)."""

    key: str
    upload_id: str
    initiated: datetime | None = None


#: callables told of every transfer's progress: ``(label, bytes_done, bytes_total, finished)``; a console
#: registers one to draw a progress bar (:func:`watch_progress`); they must be cheap and never raise
PROGRESS_LISTENERS: list[Callable[[str, int, int, bool], None]] = []


@contextmanager
def watch_progress(listener: Callable[[str, int, int, bool], None]) -> Iterator[None]:
    """Tell ``listener`` of every transfer's progress in this process for the block."""
    PROGRESS_LISTENERS.append(listener)
    try:
        yield
    finally:
        PROGRESS_LISTENERS.remove(listener)


class Progress:
    """Thread-safe counter that logs files done/total, MB and MB/s every few seconds (and tells the
    :data:`PROGRESS_LISTENERS` after each file). Files already in place count as done, but only bytes that
    moved count for the throughput: a transfer that moved nothing logs no rate (and no final line: the
    hook's summary says what it left unchanged)."""

    def __init__(
        self, label: str, total_files: int, total_bytes: int, interval: float = PROGRESS_INTERVAL_SECONDS
    ) -> None:
        self.label = label
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.interval = interval
        self.files = 0
        self.bytes = 0
        self.sent_bytes = 0
        self.started = time.monotonic()
        self._last_log = self.started
        self._lock = threading.Lock()

    def add(self, nbytes: int, sent: bool = True) -> None:
        """One file done, of ``nbytes``; ``sent``: its bytes moved (False: it was already in place)."""
        with self._lock:
            self.files += 1
            self.bytes += nbytes
            self.sent_bytes += nbytes if sent else 0
            now = time.monotonic()
            if now - self._last_log >= self.interval:
                self._last_log = now
                self._log(now)
            done = self.bytes
        self._tell(done, False)

    def finish(self) -> float:
        now = time.monotonic()
        if self.sent_bytes:
            self._log(now)
        self._tell(self.bytes, True)
        return now - self.started

    def _tell(self, done: int, finished: bool) -> None:
        for listener in list(PROGRESS_LISTENERS):
            try:
                listener(self.label, done, self.total_bytes, finished)
            except Exception:  # a display must never break a transfer
                log.debug("progress listener failed", exc_info=True)

    def _log(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = f", {self.sent_bytes / 1e6 / elapsed:.1f} MB/s" if self.sent_bytes else ""
        log.info(
            "%s: %d/%d files, %.1f/%.1f MB%s",
            self.label,
            self.files,
            self.total_files,
            self.bytes / 1e6,
            self.total_bytes / 1e6,
            rate,
        )


def raise_failures(failures: dict[str, BaseException], total: int) -> None:
    """Raise the one error of a transfer (or a :class:`TransferError` naming up to five of several)."""
    if not failures:
        return
    errors = list(failures.values())
    if len(errors) == 1 or all(type(e) is type(errors[0]) and str(e) == str(errors[0]) for e in errors):
        raise errors[0]
    shown = "; ".join(f"{key}: {err}" for key, err in list(failures.items())[:5])
    more = f" (+{len(failures) - 5} more)" if len(failures) > 5 else ""
    raise TransferError(f"{len(failures)} of {total} transfers failed: {shown}{more}", failures)


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
    raise_failures(failures, len(items))
    return results


# ---------------------------------------------------------------------------------------
# Object metadata
# ---------------------------------------------------------------------------------------


def stat_remote(client: Minio, bucket: str, key: str, version_id: str | None = None) -> RemoteObject | None:
    """Return what ``HEAD`` says of an object (its sha256 from the metadata label, else from the
    ``sha256`` tag), or ``None`` if there is no such object."""
    try:
        stat = client.stat_object(bucket, key, version_id=version_id)
    except S3Error as err:
        if err.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
            return None
        raise
    meta = stat.metadata or {}
    sha = meta.get(f"x-amz-meta-{SHA256_META}")
    if not sha and meta.get("x-amz-tagging-count"):
        sha = read_sha256_tag(client, bucket, key, stat.version_id)
    return RemoteObject(
        key=key,
        size=int(stat.size or 0),
        etag=(stat.etag or "").strip('"') or None,
        sha256=sha.lower() if sha else None,
        version_id=stat.version_id,
        last_modified=stat.last_modified,
    )


def read_sha256_tag(client: Minio, bucket: str, key: str, version_id: str | None) -> str | None:
    """The SHA-256 a streamed upload tagged its object with; ``None`` if there is none or it is not
    64 hex digits (a tag is what some writer said, so a malformed one is not used)."""
    tags = client.get_object_tags(bucket, key, version_id=version_id)
    value = str(tags.get(SHA256_TAG) or "").lower() if tags is not None else ""
    return value if _SHA256_HEX.fullmatch(value) else None


def write_sha256_tag(client: Minio, bucket: str, key: str, version_id: str | None, sha256: str) -> None:
    """Tag one object version with the SHA-256 of its bytes."""
    tags = Tags.new_object_tags()
    tags[SHA256_TAG] = sha256
    client.set_object_tags(bucket, key, tags, version_id=version_id)


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


# ---------------------------------------------------------------------------------------
# The asynchronous engine: many requests in flight on one thread, bounded memory
# ---------------------------------------------------------------------------------------


class ByteBudget:
    """At most ``limit`` bytes of file data held in memory at once (a lone item larger than the
    budget still runs, alone)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n

    async def release(self, n: int) -> None:
        async with self._cond:
            self.used -= n
            self._cond.notify_all()


async def gather_bounded(
    items: list[T],
    work: Callable[[T], Awaitable[Any]],
    concurrency: int,
    name: Callable[[T], str],
    translate: Translate,
) -> None:
    """Run ``work`` over ``items`` with at most ``concurrency`` in flight. After the first failure no new
    item starts; the requests in flight are let finish (a cancelled future of the Rust client may still
    complete its request, so only a settled transfer can say what is stored); then the translated error
    (or a :class:`TransferError` listing several) is raised."""
    queue = iter(items)
    failures: dict[str, BaseException] = {}

    async def worker() -> None:
        for item in queue:
            if failures:
                return
            try:
                await work(item)
            except Exception as err:
                failures[name(item)] = translate(err, name(item))
                return

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(items))))))
    raise_failures(failures, len(items))


async def list_store(store: Any, prefix: str) -> list[RemoteObject]:
    """Every object below ``prefix`` (one paginated LIST), without folder placeholders."""
    found: list[RemoteObject] = []
    async for batch in obstore.list(store, prefix=prefix or None, chunk_size=1000):
        for meta in batch:
            key = meta["path"]
            if key and not key.endswith("/"):
                found.append(
                    RemoteObject(
                        key=key,
                        size=int(meta["size"]),
                        etag=etags.clean_etag(meta.get("e_tag")),
                        last_modified=meta.get("last_modified"),
                    )
                )
    return found


async def head_store(store: Any, key: str) -> RemoteObject | None:
    """What a HEAD says of one object (size, ETag), or None when there is none."""
    try:
        meta = await obstore.head_async(store, key)
    except FileNotFoundError:
        return None
    return RemoteObject(key=key, size=int(meta["size"]), etag=etags.clean_etag(meta.get("e_tag")))


@dataclass
class Engine:
    """The settings one transfer runs with: the store of one bucket (data), the hook's client (tags and
    HEADs of large objects), retries, concurrency, part size."""

    store: Any
    bucket: str
    client: Minio
    retry: RetryPolicy = DEFAULT_RETRY
    concurrency: int = DEFAULT_CONCURRENCY
    part_size: int = DEFAULT_PART_SIZE
    memory: int = DEFAULT_MEMORY_BUDGET
    #: ranged GETs of one large object in flight at once (fewer than 2: every object in one GET)
    ranges_in_flight: int = object_io.RANGES_IN_FLIGHT

    def __post_init__(self) -> None:
        self.part_size = max(self.part_size, MIN_PART_SIZE)

    async def upload(
        self,
        key: str,
        path: Path,
        budget: ByteBudget,
        *,
        listed: RemoteObject | None,
        expected_sha256: str | None = None,
        attributes: dict[str, str] | None = None,
    ) -> object_io.Sent:
        """Upload one file unless ``listed`` (what the prefix's listing said of the key) already holds its
        bytes: same size and the server's ETag equal to the file's. Reads the file once to send it (and
        once more only to compare a same-size object). ``expected_sha256`` (from a manifest) must be the
        sha256 of what is sent, or :class:`SourceChangedError`: the file changed since it was hashed."""
        before = path.stat()
        size = before.st_size
        attrs = {"Content-Type": "application/octet-stream", **(attributes or {})}
        if size <= self.part_size:
            await budget.acquire(size)
            try:
                data = (
                    object_io.read_small(path)
                    if size <= SMALL_READ_LIMIT
                    else await asyncio.to_thread(object_io.read_small, path)
                )
                sha = hashlib.sha256(data).hexdigest()
                md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
                self._check_source(path, key, expected_sha256, sha, len(data), size)
                if listed is not None and listed.size == size and listed.etag == md5:
                    log.debug("skip %s/%s: identical (ETag %s)", self.bucket, key, md5)
                    return object_io.Sent(False, size, sha, md5)
                if listed is not None:
                    log.info("replace %s/%s: stored object differs from %s", self.bucket, key, path)
                etag = await self.retry.call_async(
                    lambda: object_io.put_small(self.store, key, data, sha, md5, attrs), f"upload {self.bucket}/{key}"
                )
                return object_io.Sent(True, size, sha, etag)
            finally:
                await budget.release(size)
        if listed is not None and listed.size == size:  # the only case that needs a read before sending
            sha, etag = await asyncio.to_thread(etags.local_etag, path, size, self.part_size)
            self._check_source(path, key, expected_sha256, sha, size, size)
            if listed.etag == etag:
                log.debug("skip %s/%s: identical (ETag %s)", self.bucket, key, etag)
                return object_io.Sent(False, size, sha, etag)
        if listed is not None:
            log.info("replace %s/%s: stored object differs from %s", self.bucket, key, path)
        if expected_sha256:
            attrs[SHA256_META] = expected_sha256  # known before the first byte: the label goes with the object
        streaming = self.part_size * (object_io.PART_CONCURRENCY + 1)
        await budget.acquire(streaming)
        try:
            sha, etag, read, version = await self.retry.call_async(
                lambda: object_io.put_streamed(self.store, key, path, self.part_size, attrs),
                f"upload {self.bucket}/{key}",
            )
        finally:
            await budget.release(streaming)
        after = path.stat()
        changed = (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or read != size
        if changed or (expected_sha256 and sha != expected_sha256):
            await self.retry.call_async(lambda: obstore.delete_async(self.store, key), f"remove {self.bucket}/{key}")
            raise SourceChangedError(
                f"{path} changed while it was uploaded to {self.bucket}/{key}; the object was removed. Make sure "
                "nothing writes the file during the upload, then rerun."
            )
        if not expected_sha256:
            await self._tag_sha256(key, version, sha)
        return object_io.Sent(True, size, sha, etag)

    async def _tag_sha256(self, key: str, version: str | None, sha: str) -> None:
        """Tag a streamed object with its SHA-256, so downloads check that rather than the multipart
        ETag's MD5s. The object is complete without it: a tag that cannot be written is a warning."""
        try:
            await self.retry.call_async(
                lambda: asyncio.to_thread(write_sha256_tag, self.client, self.bucket, key, version, sha),
                f"tag {self.bucket}/{key}",
            )
        except Exception as err:  # the bytes are stored and verified; only the hint is missing
            log.warning(
                "%s/%s: its sha256 could not be tagged (%s: %s); downloads will check its multipart ETag instead",
                self.bucket,
                key,
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
            )

    def _check_source(self, path: Path, key: str, expected: str | None, sha: str, read: int, size: int) -> None:
        if (expected and sha != expected) or read != size:
            raise SourceChangedError(
                f"{path} changed while it was uploaded to {self.bucket}/{key} (its bytes now hash to {sha[:12]}, "
                f"not {str(expected)[:12]} as before); nothing was sent. Make sure nothing writes the file during "
                "the upload, then rerun."
            )

    async def download(
        self, remote: RemoteObject, dest: Path, budget: ByteBudget, *, expected_sha256: str | None = None
    ) -> int:
        """Fetch one object to ``dest``, verified before it appears there: a small one in memory, then placed
        at once (:meth:`_small`); a large one through a temporary name in its folder, renamed once verified.

        With ``expected_sha256`` (a manifest's) the bytes must hash to it and have ``remote.size`` bytes,
        whatever the object's labels say. Otherwise: the ``x-amz-meta-sha256`` label if the object has
        one, else the server's ETag (single-part MD5, or the multipart ETag of the parts read when
        they line up with the upload's parts); an object none of these covers gets a warning."""
        large = remote.size > self.part_size
        hold = object_io.STREAM_CHUNK * (object_io.STREAM_QUEUE + 2) if large else remote.size
        await budget.acquire(hold)
        if not large:
            try:
                return await self._small(remote, dest, expected_sha256)
            finally:
                await budget.release(hold)
        tmp = partial_path(dest, id(remote))
        try:
            ranges = object_io.ranged_plan(remote.size, self._part_size_of(remote), self.ranges_in_flight)
            # the ranges must all be of one object: with no ETag to pin them to (a manifest gives none),
            # a HEAD gives it (and the size the ranges are planned on: a manifest's may be out of date)
            stat = await self._stat(remote) if not expected_sha256 or (ranges and not remote.etag) else None
            label = stat.sha256 if stat and not expected_sha256 else None
            pinned = remote
            if ranges and not remote.etag:
                pinned = replace(remote, etag=stat.etag, size=stat.size) if stat and stat.etag else remote
                ranges = object_io.ranged_plan(pinned.size, self._part_size_of(pinned), self.ranges_in_flight)
                ranges = ranges if pinned.etag else None
            part_size = self._part_size_of(pinned)
            sha = bool(expected_sha256 or label)  # else the multipart ETag is what can be checked
            if ranges:  # each range is retried on its own, from where it stopped
                got = await asyncio.to_thread(self._ranged, pinned, label, part_size, ranges, tmp, sha)
            else:
                got = await self.retry.call_async(
                    lambda: asyncio.to_thread(self._streamed, remote, label, part_size, tmp, sha),
                    f"download {self.bucket}/{remote.key}",
                )
            self._verify(remote, dest, got, expected_sha256)
            os.replace(tmp, dest)
            return got.size
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            await budget.release(hold)

    async def _small(self, remote: RemoteObject, dest: Path, expected_sha256: str | None) -> int:
        """One GET into memory, verified there, then placed under ``dest`` at once: bytes that fail
        verification are never written anywhere."""
        data, got = await self.retry.call_async(
            lambda: object_io.get_small(self.store, remote.key, remote.version_id, sha=expected_sha256 is not None),
            f"download {self.bucket}/{remote.key}",
        )
        self._verify(remote, dest, got, expected_sha256)
        tmp = functools.partial(partial_path, dest, id(remote))
        if got.size <= SMALL_READ_LIMIT:
            object_io.place_new(dest, data, tmp)
        else:  # up to a part: written off the loop, as it is read when uploaded
            await asyncio.to_thread(object_io.place_new, dest, data, tmp)
        return got.size

    def _streamed(
        self, remote: RemoteObject, label: str | None, part_size: int, tmp: Path, sha: bool
    ) -> object_io.Fetched:
        tmp.unlink(missing_ok=True)  # a retry starts the file again
        return object_io.get_streamed(
            self.client,
            self.bucket,
            remote.key,
            remote.etag,
            remote.version_id,
            label,
            part_size,
            tmp,
            sha=sha,
            md5=not sha,
        )

    def _ranged(
        self,
        remote: RemoteObject,
        label: str | None,
        part_size: int,
        ranges: list[tuple[int, int]],
        tmp: Path,
        sha: bool,
    ) -> object_io.Fetched:
        tmp.unlink(missing_ok=True)
        return object_io.get_ranged(
            self.client,
            self.bucket,
            remote.key,
            remote.etag,
            remote.version_id,
            label,
            remote.size,
            ranges,
            part_size,
            tmp,
            self.retry.call,
            sha=sha,
            md5=not sha,
            in_flight=self.ranges_in_flight,
        )

    async def _stat(self, remote: RemoteObject) -> RemoteObject | None:
        """What a HEAD says of the object now: size, ETag and the sha256 it carries (metadata label, else
        the tag of a streamed upload), if any; None when there is no such object."""
        return await self.retry.call_async(
            lambda: asyncio.to_thread(stat_remote, self.client, self.bucket, remote.key, remote.version_id),
            f"stat {self.bucket}/{remote.key}",
        )

    def _part_size_of(self, remote: RemoteObject) -> int:
        """The upload's part size when the ETag tells it (so the parts' MD5s give the ETag back), else ours."""
        return etags.part_size_of(remote.size, remote.etag, self.part_size, MAX_RANGE_SIZE)

    def _verify(self, remote: RemoteObject, dest: Path, got: object_io.Fetched, expected_sha256: str | None) -> None:
        source = "the manifest" if expected_sha256 else "the object's checksum"
        problem = None
        if got.size != remote.size:
            problem = f"got {got.size} bytes, {source} says {remote.size}"
        want_sha = expected_sha256 or got.label
        etag = got.etag or remote.etag
        if problem is None and want_sha and got.sha256 != want_sha.lower():
            problem = f"sha256 {got.sha256}, {source} says {want_sha}"
        elif problem is None and not want_sha:
            try:
                problem = etags.md5_mismatch(etag, got.md5, got.part_md5s)
            except LookupError:
                log.warning(
                    "%s/%s has no sha256 label and an ETag that cannot be checked: only its size was",
                    self.bucket,
                    remote.key,
                )
        if problem:
            raise ChecksumMismatchError(
                f"{self.bucket}/{remote.key}: downloaded bytes do not match {source} ({problem}); "
                f"nothing was written to {dest}. "
                + (
                    "The stored object is not the published one: republish the job or restore the object."
                    if expected_sha256
                    else "The stored object is damaged or was replaced without its checksum: re-upload it."
                )
            )

    def local_matches(self, path: Path, remote: RemoteObject, expected_sha256: str | None = None) -> bool:
        """True if ``path`` already holds the object's bytes: same size, then the manifest's sha256 when
        given, else the server's ETag (computed locally the same way); one read of the local file."""
        try:
            if path.stat().st_size != remote.size or not path.is_file():
                return False
        except FileNotFoundError:
            return False
        if expected_sha256:
            return sha256_file(path) == expected_sha256.lower()
        part = etags.local_part_size(remote.size, remote.etag, self.part_size, MAX_RANGE_SIZE)
        if part is None:
            return False  # an ETag nothing here can reproduce
        _, local = etags.local_etag(path, remote.size, part, sha=False)
        return local == remote.etag


def run_engine(coro: Coroutine[Any, Any, T], translate: Translate | None = None, what: str = "") -> T:
    """Run one transfer's coroutine to completion on a loop of its own (callers are synchronous; the loop is
    uvloop's where installed, :mod:`~e2e3d_provider.core.event_loop`); an error comes out translated (the
    per-file ones already are)."""
    try:
        return event_loop.run(coro)
    except Exception as err:
        if translate is None:
            raise
        translated = translate(err, what)
        if translated is err:
            raise
        raise translated from err


def _record(result: TransferResult, lock: threading.Lock, sent: bool, size: int, key: str) -> None:
    with lock:
        if sent:
            result.files += 1
            result.bytes += size
        else:
            result.skipped_files += 1
            result.skipped_bytes += size
        result.keys.append(key)


def upload_file(
    engine: Engine,
    key: str,
    path: Path,
    *,
    sha256: str | None = None,
    content_type: str = "application/octet-stream",
) -> object_io.Sent:
    """Upload one file unless the object already holds the same bytes (one HEAD of the key decides)."""

    async def run() -> object_io.Sent:
        listed = await engine.retry.call_async(lambda: head_store(engine.store, key), f"stat {engine.bucket}/{key}")
        budget = ByteBudget(engine.memory)
        return await engine.upload(
            key, path, budget, listed=listed, expected_sha256=sha256, attributes={"Content-Type": content_type}
        )

    return run_engine(run())


def upload_directory(
    engine: Engine,
    local_dir: Path,
    prefix: str,
    *,
    translate: Translate,
    files: list[tuple[str, Path]] | None = None,
    checksums: dict[str, str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> TransferResult:
    """Upload every file below ``local_dir`` (or the given ``files``) under ``prefix``; the result's
    ``checksums`` give each file's size, sha256 and stored ETag (what a manifest records).

    One LIST of the prefix decides skip-identical for every file (no HEAD per file);
    ``on_progress(files_done, files_total)`` is called after each file.
    """
    files = iter_local_files(local_dir) if files is None else files
    checksums = checksums or {}
    sizes = {rel: path.stat().st_size for rel, path in files}
    progress = Progress(f"upload {local_dir} -> {engine.bucket}/{prefix}", len(files), sum(sizes.values()))
    result = TransferResult("upload", engine.bucket, prefix)
    lock = threading.Lock()

    async def run() -> None:
        listing = {
            o.key: o
            for o in await engine.retry.call_async(
                lambda: list_store(engine.store, prefix), f"list {engine.bucket}/{prefix}"
            )
        }
        budget = ByteBudget(engine.memory)

        async def one(item: tuple[str, Path]) -> None:
            rel, path = item
            key = prefix + rel
            outcome = await engine.upload(
                key, path, budget, listed=listing.get(key), expected_sha256=checksums.get(rel)
            )
            result.checksums[rel] = (outcome.size, outcome.sha256, outcome.etag)
            _record(result, lock, outcome.sent, outcome.size, key)
            progress.add(outcome.size, sent=outcome.sent)
            if on_progress is not None:
                on_progress(len(result.keys), len(files))

        # largest first: a large file's parts then overlap the many small ones instead of running alone at the end
        largest_first = sorted(files, key=lambda item: -sizes[item[0]])
        await gather_bounded(largest_first, one, engine.concurrency, lambda item: prefix + item[0], translate)

    run_engine(run(), translate, f"upload {local_dir} -> {engine.bucket}/{prefix}")
    result.seconds = progress.finish()
    result.keys.sort()
    return result


def upload_objects(
    engine: Engine,
    items: list[tuple[str, Path]],
    *,
    translate: Translate,
    checksums: Mapping[str, str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> TransferResult:
    """Upload each ``(key, path)`` unless its object already holds the same bytes, deciding by one HEAD per
    key: for keys spread over a large area (content-addressed blobs), where one LIST would read the whole
    area. ``checksums`` (key -> sha256 computed before) must match what is sent. The result's ``checksums``
    are keyed by object key."""
    checksums = checksums or {}
    progress = Progress(
        f"upload {len(items)} objects -> {engine.bucket}", len(items), sum(path.stat().st_size for _, path in items)
    )
    result = TransferResult("upload", engine.bucket, "")
    lock = threading.Lock()

    async def run() -> None:
        budget = ByteBudget(engine.memory)

        async def one(item: tuple[str, Path]) -> None:
            key, path = item
            listed = await engine.retry.call_async(lambda: head_store(engine.store, key), f"stat {engine.bucket}/{key}")
            outcome = await engine.upload(key, path, budget, listed=listed, expected_sha256=checksums.get(key))
            result.checksums[key] = (outcome.size, outcome.sha256, outcome.etag)
            _record(result, lock, outcome.sent, outcome.size, key)
            progress.add(outcome.size, sent=outcome.sent)
            if on_progress is not None:
                on_progress(len(result.keys), len(items))

        await gather_bounded(items, one, engine.concurrency, lambda item: item[0], translate)

    run_engine(run(), translate, f"upload {len(items)} objects -> {engine.bucket}")
    result.seconds = progress.finish()
    result.keys.sort()
    return result


def download_object(engine: Engine, remote: RemoteObject, dest: Path, *, expected_sha256: str | None = None) -> int:
    """Fetch one object to ``dest`` (verified, atomic). Returns the bytes written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    return run_engine(engine.download(remote, dest, ByteBudget(engine.memory), expected_sha256=expected_sha256))


def download_prefix(
    engine: Engine,
    prefix: str,
    local_dir: Path,
    *,
    translate: Translate,
    delete_extraneous: bool = False,
    expected: Mapping[str, tuple[int, str]] | None = None,
) -> TransferResult:
    """Mirror every object below ``prefix`` into ``local_dir``; unchanged local files are kept.

    With ``expected`` (relative path -> (size, sha256), a manifest's files), exactly those files are
    fetched, with no listing, and each is checked against the manifest's sha256 (a local file is kept
    only if its own bytes hash to it): never against the objects' labels, which any writer can set.
    Without it, one LIST gives sizes and ETags, and a local file of the same size is kept when its bytes
    give the same ETag (no HEAD per file). With ``delete_extraneous``, local files that are no longer
    wanted are removed, so the directory is an exact copy (a read-through cache of the prefix). A target
    whose way below ``local_dir`` passes through a symbolic link is refused (UnsafePathError) before anything
    is fetched.
    """
    result = TransferResult("download", engine.bucket, prefix)
    lock = threading.Lock()
    local_dir.mkdir(parents=True, exist_ok=True)
    planned: list[tuple[str, RemoteObject]] = []
    progress: Progress | None = None

    async def run() -> None:
        nonlocal planned, progress
        if expected is not None:
            planned = [
                (rel, RemoteObject(key=prefix + validate_relpath(rel), size=size))
                for rel, (size, _) in expected.items()
            ]
        else:
            listing = await engine.retry.call_async(
                lambda: list_store(engine.store, prefix), f"list {engine.bucket}/{prefix}"
            )
            planned = [(key_relpath(obj.key, prefix), obj) for obj in listing]  # rejects hostile keys first
        progress = Progress(
            f"download {engine.bucket}/{prefix} -> {local_dir}", len(planned), sum(o.size for _, o in planned)
        )
        targets = {rel: local_path_for(local_dir, rel) for rel, _ in planned}
        # a linked folder (or file) on the way would take the bytes elsewhere; what is absent needs no compare
        present = entries_below(local_dir, targets.values())
        for folder in {path.parent for path in targets.values()}:
            folder.mkdir(parents=True, exist_ok=True)
        budget = ByteBudget(engine.memory)

        async def one(item: tuple[str, RemoteObject]) -> None:
            rel, remote = item
            dest = targets[rel]
            want = expected[rel][1] if expected is not None else None
            fetched = dest not in present or not engine.local_matches(dest, remote, want)
            if not fetched:
                _record(result, lock, False, remote.size, remote.key)
            else:
                size = await engine.download(remote, dest, budget, expected_sha256=want)
                _record(result, lock, True, size, remote.key)
            assert progress is not None
            progress.add(remote.size, sent=fetched)

        # largest first: a large object's ranges then overlap the many small ones instead of running alone at the end
        largest_first = sorted(planned, key=lambda item: -item[1].size)
        await gather_bounded(largest_first, one, engine.concurrency, lambda item: item[1].key, translate)

    run_engine(run(), translate, f"download {engine.bucket}/{prefix} -> {local_dir}")
    if delete_extraneous:
        wanted = {rel for rel, _ in planned}
        for rel, path in iter_local_files(local_dir):
            if rel not in wanted:
                path.unlink()
                result.removed_files += 1
    result.seconds = progress.finish() if progress is not None else 0.0
    result.keys.sort()
    return result
