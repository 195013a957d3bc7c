"""One object in or out, asynchronously, over the Rust ``object_store`` client (PyPI ``obstore``).

The data path's per-object steps, each reading the local file once:

* a small file (up to one part) is read whole, hashed (SHA-256 for the manifest and the label, MD5 to
  compare with the server's ETag) and sent in one PUT; the ETag the server answers must be that MD5,
  so the server has exactly the bytes that were hashed;
* a large file is streamed in parts (a multipart upload, parts in flight in parallel), hashed as it is
  read; its ETag must equal the multipart ETag of the parts read (MD5 of the parts' MD5s, ``-N``);
* a download of a small object is one GET, verified in memory, then placed under its name at once: written
  into a file with no name yet (``O_TMPFILE``) that is then linked as the target (:func:`place_new`);
  a large one is one GET pinned to its ETag (``If-Match``)
  on the hook's HTTP client. Over plain HTTP on Linux its body goes from the socket into the file by
  ``splice`` (copied once, by the kernel) while a second thread hashes the file's page cache through a
  memory map; otherwise it is read in 1 MiB chunks while a second thread writes and hashes each one;
* a very large object (:func:`ranged_plan` says which) is fetched as ranged GETs, a few in flight, each
  pinned to the ETag and spliced (or written) at its offset into a file whose blocks are allocated before
  the first GET (:func:`reserve`: a disk without room fails at once); one thread hashes the file's
  contiguous written prefix in order through a memory map, so the SHA-256 is still one pass over the
  whole file, and a range cut part-way is asked again from where it stopped (the caller's retry policy).
  Ranges are whole multiples of the upload's parts, so a multipart ETag's part MD5s still line up.

Nothing here opens connections or knows Airflow: the caller passes a store (or the hook's client) and,
for ranged downloads, the retry policy each range runs under.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import http.client
import mmap
import os
import select
import socket
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import obstore

from e2e3d_provider.core.etag import clean_etag
from e2e3d_provider.exceptions import ChecksumMismatchError

SHA256_META = "sha256"
#: files up to this size are read whole into memory (they are sent in one PUT)
SMALL_READ_LIMIT = 1024 * 1024
#: a large download is read in chunks of this size; at most STREAM_QUEUE of them wait to be written
STREAM_CHUNK = 1024 * 1024
STREAM_QUEUE = 4
#: a spliced download moves up to this much per call; its hashing thread maps windows of HASH_WINDOW
SPLICE_CHUNK = 1024 * 1024
HASH_WINDOW = 8 * 1024 * 1024
#: parts of one multipart upload in flight at once (memory: this many parts)
PART_CONCURRENCY = 4
#: a large download goes as ranged GETs from this size up (below it one spliced GET measured as fast)
RANGED_MIN = 32 * 1024 * 1024
#: ranged GETs of one object in flight at once, and the size each range aims at (a whole number of the
#: upload's parts); memory is one pipe per range in flight plus the hashing window, whatever the size.
#: Measured (bench/transfer.py and 1 GB single objects, 2 cores): 4 x 48 MiB beat 4 x 16, 8 x 32 and
#: 3 x 128 MiB on MinIO (fewer requests, each of whole erasure blocks) and tied with them on SeaweedFS
RANGES_IN_FLIGHT = 4
RANGE_TARGET = 48 * 1024 * 1024
#: the farthest ranged GETs may write ahead of the bytes already hashed. The in-order SHA-256 is the
#: download's longest single thread of work (1.2 s of a core for 2 GB): when the cores are all busy
#: (the S3 server on the same machine), ranges running far ahead take the CPU it needs and it finishes
#: alone after the last byte. Held to this lead, they leave it a core: 2 GB from MinIO on 2 cores,
#: 3 rounds alternating, 1.73-1.80 s against 1.90-1.92 s unpaced (s5cmd 1.59-1.98 s in the same runs).
HASH_LEAD = 256 * 1024 * 1024
#: errors of ``fallocate(2)`` that mean only "this file system cannot allocate ahead" (a sparse file then)
_NO_FALLOCATE = frozenset({errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


@dataclass(frozen=True)
class Sent:
    """What one upload did: whether bytes went out, the file's size, SHA-256 and the stored ETag."""

    sent: bool
    size: int
    sha256: str
    etag: str | None


def place_new(dest: Path, data: Any, tmp: Callable[[], Path]) -> None:
    """Put ``data`` (bytes already verified) under ``dest`` at once: ``dest`` is then absent or holds all of
    ``data``, never part of it, whatever happens on the way (a kill, a full disk). The bytes go into a file
    with no name in ``dest``'s folder (``O_TMPFILE``), linked as ``dest`` once written: one directory entry
    made instead of a temporary one and a rename (30 us against 41-73 us a file on ext4, 10,000 x 4 KB),
    and a kill leaves nothing to clean. Where that way is closed (``dest`` exists and is replaced, a file
    system without ``O_TMPFILE``, no ``/proc``), the bytes go to the temporary name ``tmp()`` in the same
    folder and are renamed over ``dest``."""
    if _link_unnamed(dest, data):
        return
    path = tmp()
    try:
        write_new(path, data)
        os.replace(path, dest)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


@functools.cache
def _proc_fd() -> int | None:
    """This process's handle on ``/proc``, through which an unnamed file is linked (None without one)."""
    try:
        return os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None


def _link_unnamed(dest: Path, data: Any) -> bool:
    """Write ``data`` into an unnamed file in ``dest``'s folder and link it as ``dest``. False, with nothing
    left behind, where the file system, ``/proc`` or an existing ``dest`` does not allow it; a failed write
    (a full disk) raises, and the unnamed file goes with its descriptor."""
    proc = _proc_fd()
    if proc is None or not hasattr(os, "O_TMPFILE"):
        return False
    try:
        fd = os.open(dest.parent, os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o644)
    except OSError:
        return False  # not supported here: the named temporary file says what is wrong, if anything is
    try:
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(fd, view) :]
        try:
            os.link(f"self/fd/{fd}", dest, src_dir_fd=proc)  # linkat(AT_SYMLINK_FOLLOW): never follows at dest
        except OSError:
            return False  # dest exists (a replacement), or links through /proc are refused here
        return True
    finally:
        os.close(fd)


def write_new(path: Path, data: Any) -> None:
    """Create the temporary file ``path`` holding ``data`` (any buffer), written whole. A file already
    under that name (an earlier attempt's, the name being the download's own) is removed and the file
    made anew: never written through (it could be a link planted there), and no removal is tried before
    a first attempt, which has nothing to remove (a system call saved per small file)."""
    view = memoryview(data).cast("B")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        path.unlink()
        fd = os.open(path, flags, 0o644)
    try:
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def read_small(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


async def put_small(
    store: Any,
    key: str,
    data: bytes,
    sha256: str,
    md5: str,
    attributes: dict[str, str],
) -> str:
    """One PUT of ``data``; returns the ETag, which must be the bytes' MD5 (else the server has others)."""
    result = await obstore.put_async(
        store, key, data, attributes={**attributes, SHA256_META: sha256}, use_multipart=False
    )
    etag = clean_etag(result.get("e_tag"))
    if etag != md5:
        raise ChecksumMismatchError(f"{key}: the server stored other bytes than were sent (ETag {etag}, MD5 {md5})")
    return etag


class _HashingParts:
    """An async iterator over a file's parts that hashes them (SHA-256 of the whole) as they are read,
    off the event loop; it never holds more than the part it hands out."""

    def __init__(self, path: Path, part_size: int) -> None:
        self.path = path
        self.part_size = part_size
        self.sha = hashlib.sha256()
        self.bytes_read = 0
        self._handle = open(path, "rb")  # noqa: SIM115 (closed by close(), after the upload)

    def _next(self) -> bytes:
        chunk = self._handle.read(self.part_size)
        if chunk:
            self.sha.update(chunk)
            self.bytes_read += len(chunk)
        return chunk

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        chunk = await asyncio.to_thread(self._next)
        if not chunk:
            raise StopAsyncIteration
        return chunk

    def close(self) -> None:
        self._handle.close()


async def put_streamed(
    store: Any, key: str, path: Path, part_size: int, attributes: dict[str, str]
) -> tuple[str, str, int, str | None]:
    """A multipart upload of ``path``, parts read, hashed and sent in one pass (each part's payload is
    signed, SigV4, so the server refuses a part whose bytes changed on the way). Returns
    ``(sha256, etag, bytes_read, version_id)``."""
    parts = _HashingParts(path, part_size)
    try:
        result = await obstore.put_async(
            store,
            key,
            parts,
            attributes=attributes,
            use_multipart=True,
            chunk_size=part_size,
            max_concurrency=PART_CONCURRENCY,
        )
    finally:
        parts.close()
    return parts.sha.hexdigest(), clean_etag(result.get("e_tag")) or "", parts.bytes_read, result.get("version")


@dataclass
class Fetched:
    """What one download wrote: bytes, their SHA-256, the MD5 (single-part objects) and the labels."""

    size: int
    sha256: str
    md5: str | None
    part_md5s: list[bytes] | None
    label: str | None
    etag: str | None


async def get_small(store: Any, key: str, version: str | None, *, sha: bool) -> tuple[Any, Fetched]:
    """One GET of a whole object into memory: its bytes (a buffer), and what can be checked of them. Hashes only what
    will be compared: the SHA-256 when the caller holds one (``sha``) or the object carries a label, else
    the MD5 for its ETag. Nothing is written: the caller verifies, then places the bytes (:func:`place_new`)."""
    options: dict[str, Any] = {"version": version} if version else {}
    response = await obstore.get_async(store, key, options=options)  # type: ignore[arg-type]
    data = await response.bytes_async()
    meta = response.meta
    label = (response.attributes.get(SHA256_META) or "").lower() or None
    by_sha = sha or label is not None
    return data, Fetched(
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest() if by_sha else "",
        md5=None if by_sha else hashlib.md5(data, usedforsecurity=False).hexdigest(),
        part_md5s=None,
        label=label,
        etag=clean_etag(meta.get("e_tag")),
    )


class _BodyHashes:
    """The SHA-256 of a body and/or one MD5 per ``part_size`` part of it, fed in order."""

    def __init__(self, *, sha: bool, md5: bool, part_size: int) -> None:
        self.sha = hashlib.sha256() if sha else None
        self.md5s: list[bytes] | None = [] if md5 else None
        self._part = hashlib.md5(usedforsecurity=False)
        self._in_part = 0
        self._part_size = part_size

    def update(self, data: Any) -> None:
        if self.sha is not None:
            self.sha.update(data)
        if self.md5s is not None:
            view = memoryview(data)
            while view:
                take = min(len(view), self._part_size - self._in_part)
                self._part.update(view[:take])
                self._in_part, view = self._in_part + take, view[take:]
                if self._in_part == self._part_size:
                    self.md5s.append(self._part.digest())
                    self._part, self._in_part = hashlib.md5(usedforsecurity=False), 0

    def fetched(self, size: int, label: str | None, etag: str | None) -> Fetched:
        if self.md5s is not None and self._in_part:
            self.md5s.append(self._part.digest())
            self._in_part = 0
        return Fetched(
            size=size,
            sha256=self.sha.hexdigest() if self.sha is not None else "",
            md5=None,
            part_md5s=self.md5s,
            label=label,
            etag=etag,
        )


def _plain_socket_body(response: Any) -> tuple[socket.socket, Any, int] | None:
    """The socket, buffered reader and length of a response body that can go to a file without passing
    through Python (kernel ``splice``): a plain TCP connection (not TLS), a ``Content-Length``, no
    chunked or content encoding. None otherwise (the caller reads the body the ordinary way)."""
    if not hasattr(os, "splice"):
        return None
    raw = getattr(response, "_fp", None)
    if not isinstance(raw, http.client.HTTPResponse) or raw.chunked or raw.length is None:
        return None
    if response.headers.get("Content-Encoding", "identity") not in ("", "identity"):
        return None
    sock = getattr(getattr(raw.fp, "raw", None), "_sock", None)
    if type(sock) is not socket.socket:  # an ssl.SSLSocket holds ciphertext
        return None
    return sock, raw.fp, raw.length


def _splice_into(
    sock: socket.socket, reader: Any, length: int, fd: int, progress: Callable[[int], None], offset: int = 0
) -> int:
    """Move ``length`` body bytes from ``sock`` into ``fd`` at ``offset`` by ``splice`` through a pipe,
    so they are copied once, by the kernel, into the page cache; the bytes the HTTP reader already
    buffered go first. ``progress(n)`` is told how many bytes of the body the file holds (it may raise
    to stop). A server that stops early raises ``ConnectionError``, one that goes silent for the socket's
    timeout ``TimeoutError``. Writes only at offsets (never the descriptor's position), so several bodies
    can go into one file at once."""
    head = reader.read1(length) if reader.peek(0) else b""  # buffered only: no read from the socket
    written = 0
    view = memoryview(head)
    while view:
        n = os.pwrite(fd, view, offset + written)
        view, written = view[n:], written + n
    progress(written)
    timeout = sock.gettimeout()
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    pipe_out, pipe_in = os.pipe()
    try:
        with contextlib.suppress(OSError):  # a bigger pipe means fewer calls; the default works too
            fcntl.fcntl(pipe_in, getattr(fcntl, "F_SETPIPE_SZ", 1031), SPLICE_CHUNK)
        while written < length:
            try:
                got = os.splice(sock.fileno(), pipe_in, min(length - written, SPLICE_CHUNK))
            except BlockingIOError:
                if not poller.poll(None if timeout is None else timeout * 1000):
                    raise TimeoutError(f"no bytes for {timeout} s after {written} of {length}") from None
                continue
            if not got:
                raise ConnectionError(f"the server closed the connection after {written} of {length} bytes")
            moved = 0
            while moved < got:
                moved += os.splice(pipe_out, fd, got - moved, offset_dst=offset + written + moved)
            written += got
            progress(written)
    finally:
        os.close(pipe_out)
        os.close(pipe_in)
    return written


def _hash_file_as_written(fd: int, length: int, hashes: _BodyHashes, state: _Written) -> None:
    """Hash ``fd``'s first ``length`` bytes in mapped windows as soon as each is written (``state``),
    reading the page cache in place; stops early when the writer gives up."""
    pos = 0
    while pos < length:
        want = min(HASH_WINDOW, length - pos)
        if not state.wait_for(pos + want):
            return
        window = mmap.mmap(fd, want, mmap.MAP_SHARED, mmap.PROT_READ, offset=pos)
        try:
            window.madvise(mmap.MADV_SEQUENTIAL)
            hashes.update(window)
        finally:
            window.close()
        pos += want
        state.hashed(pos)


def _hash_or_abandon(fd: int, length: int, hashes: _BodyHashes, state: _Written) -> None:
    """:func:`_hash_file_as_written`, giving the download up if the hashing fails (the writers held to
    its lead would otherwise wait for it forever)."""
    try:
        _hash_file_as_written(fd, length, hashes, state)
    except BaseException:
        state.abandon()
        raise


class _Written:
    """How far a file has been written, for a reader in another thread; or that the writer gave up.

    The reader is woken only once what it waits for is written (a window's end), not at every write
    (a socket gives a few dozen KB at a time: tens of thousands of needless wake-ups per GB)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._done = 0
        self._abandoned = False
        self._wanted = 0  # the length the reader waits for (0: it is not waiting)

    def advance(self, done: int) -> None:
        with self._cond:
            self._done = done
            self._wake_reader()

    def _wake_reader(self) -> None:
        if self._wanted and self._done >= self._wanted:
            self._wanted = 0
            self._cond.notify_all()

    def abandon(self) -> None:
        with self._cond:
            self._abandoned = True
            self._cond.notify_all()

    def hashed(self, done: int) -> None:
        """The reader has hashed the first ``done`` bytes (nothing waits on that here)."""

    def wait_for(self, target: int) -> bool:
        with self._cond:
            if not self._abandoned and self._done < target:
                self._wanted = target
                self._cond.wait_for(lambda: self._abandoned or self._done >= target)
            return not self._abandoned


class _Abandoned(Exception):
    """A range stops because another one failed (never retried: it is not a transfer error)."""


class _Filled(_Written):
    """How much of each range of a file is written, and so how long its contiguous written prefix is
    (what the hashing thread may read); a range's filling raises :class:`_Abandoned` once the download
    is given up."""

    def __init__(self, ranges: list[tuple[int, int]], lead: int | None = None) -> None:
        super().__init__()
        self.ranges = ranges
        self._filled = [0] * len(ranges)
        self._head = 0  # the first range not wholly written
        #: a range filling past ``hashed + lead`` waits (None: never); at least one hashing window, so the
        #: range the hash waits for is never held back
        self.lead = None if lead is None else max(lead, HASH_WINDOW)
        self._hashed = 0
        self.most_ahead = 0  # the farthest any write got ahead of the hash (what the lead bounds)

    def hashed(self, done: int) -> None:
        with self._cond:
            self._hashed = done
            self._cond.notify_all()

    def filled(self, index: int) -> int:
        with self._cond:
            if self._abandoned:
                raise _Abandoned
            return self._filled[index]

    def fill(self, index: int, filled: int) -> None:
        with self._cond:
            if self._abandoned:
                raise _Abandoned
            self._filled[index] = max(self._filled[index], filled)
            ranges = self.ranges
            while (
                self._head < len(ranges) and self._filled[self._head] >= ranges[self._head][1] - ranges[self._head][0]
            ):
                self._head += 1
            done = ranges[-1][1] if self._head == len(ranges) else ranges[self._head][0] + self._filled[self._head]
            if done > self._done:
                self._done = done
                self._wake_reader()
            end = ranges[index][0] + self._filled[index]
            self.most_ahead = max(self.most_ahead, end - self._hashed)
            self._wait_for_hash(end)

    def wait_to_write(self, position: int) -> None:
        """Wait until a write at ``position`` is within the lead of the hash (a range about to start)."""
        with self._cond:
            self._wait_for_hash(position)

    def _wait_for_hash(self, position: int) -> None:
        if self.lead is not None:
            lead = self.lead
            self._cond.wait_for(lambda: self._abandoned or position <= self._hashed + lead)
        if self._abandoned:
            raise _Abandoned


def _spliced(body: tuple[socket.socket, Any, int], fd: int, hashes: _BodyHashes) -> int:
    sock, reader, length = body
    state = _Written()
    with ThreadPoolExecutor(1, thread_name_prefix="e2e3d-hash") as pool:
        hashing = pool.submit(_hash_file_as_written, fd, length, hashes, state)
        try:
            written = _splice_into(sock, reader, length, fd, state.advance)
        except BaseException:
            state.abandon()
            raise
        hashing.result()
    return written


def _copied(response: Any, fd: int, hashes: _BodyHashes) -> int:
    written = 0

    def sink(data: bytes) -> None:
        nonlocal written
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        written += len(data)
        hashes.update(data)

    with ThreadPoolExecutor(1, thread_name_prefix="e2e3d-sink") as pool:
        waiting: deque[Future[None]] = deque()
        for chunk in response.stream(STREAM_CHUNK):
            waiting.append(pool.submit(sink, chunk))
            if len(waiting) >= STREAM_QUEUE:
                waiting.popleft().result()
        while waiting:
            waiting.popleft().result()
    return written


def get_streamed(
    client: Any,
    bucket: str,
    key: str,
    etag: str | None,
    version: str | None,
    label: str | None,
    part_size: int,
    tmp: Path,
    *,
    sha: bool,
    md5: bool,
) -> Fetched:
    """One GET of a large object pinned to ``etag`` (``If-Match``) into ``tmp`` (a new file), hashed as it
    arrives: the SHA-256 of the whole with ``sha``; with ``md5``, one MD5 per ``part_size`` part (to give
    the multipart ETag back when the parts are the upload's).

    On Linux over plain HTTP the body goes from the socket to the file by ``splice`` (one copy, in the
    kernel) while a second thread hashes what has landed through a memory map of the file; otherwise it
    is read in :data:`STREAM_CHUNK` chunks while a second thread writes and hashes each one (at most
    :data:`STREAM_QUEUE` wait). Either way each byte is hashed once, and memory stays bounded."""
    hashes = _BodyHashes(sha=sha, md5=md5, part_size=part_size)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    headers = {"If-Match": f'"{etag}"'} if etag else None
    try:
        response = client.get_object(bucket, key, version_id=version, request_headers=headers)
        try:
            body = _plain_socket_body(response)
            written = _spliced(body, fd, hashes) if body else _copied(response, fd, hashes)
        finally:
            response.close()  # a spliced body leaves the connection unusable: it is closed, not pooled
            response.release_conn()
    finally:
        os.close(fd)
    return hashes.fetched(written, label, etag)


def reserve(fd: int, size: int, path: Path) -> None:
    """Make the new file ``fd`` ``size`` bytes long with its disk blocks allocated now (``fallocate(2)``),
    so that a disk without room for the object fails here, before a byte is fetched (``OSError``
    ``ENOSPC`` naming ``path``), and the ranges write into blocks already there: 2 GB from MinIO and
    SeaweedFS on ext4 took 0.4-1.1 s less kernel CPU than into a sparse file, whose blocks are allocated
    as the pages are written back (alternating rounds in one process: docs/performance.md, "Allocated
    blocks"). Where the file system cannot allocate ahead, or off Linux, the file is made sparse
    (``ftruncate``) as before."""
    allocate = _fallocate()
    if allocate is not None:
        while allocate(fd, 0, 0, size) != 0:
            err = ctypes.get_errno()
            if err in _NO_FALLOCATE:
                break
            if err != errno.EINTR:  # EINTR: a signal came first; ask again
                raise OSError(err, f"{os.strerror(err)}: cannot make room for {size} bytes", str(path))
        else:
            return
    os.ftruncate(fd, size)


@functools.cache
def _fallocate() -> Callable[[int, int, int, int], int] | None:
    """libc's ``fallocate(fd, mode, offset, len)``, or None where there is none (not Linux)."""
    try:
        func = ctypes.CDLL(None, use_errno=True).fallocate
    except (AttributeError, OSError):
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    func.restype = ctypes.c_int
    return func


def ranged_plan(size: int, part_size: int, in_flight: int = RANGES_IN_FLIGHT) -> list[tuple[int, int]] | None:
    """The ``(start, end)`` byte ranges to fetch an object of ``size`` bytes in, or None when one GET is
    the faster way (below :data:`RANGED_MIN`). Each range is a whole number of ``part_size`` parts (the
    upload's, so a multipart ETag's part MD5s line up with them), near :data:`RANGE_TARGET`, and small
    enough that there are at least ``in_flight`` ranges (so all are busy, and the hash, which follows the
    written prefix in order, is never far behind the last byte)."""
    if size < max(RANGED_MIN, 2 * part_size) or in_flight < 2:
        return None
    parts = max(1, min(round(RANGE_TARGET / part_size), size // (in_flight * part_size)))
    step = parts * part_size
    return [(start, min(start + step, size)) for start in range(0, size, step)]


def _fetch_range(
    client: Any,
    bucket: str,
    key: str,
    headers: dict[str, str] | None,
    version: str | None,
    start: int,
    end: int,
    fd: int,
    progress: Callable[[int], None],
) -> None:
    """One ranged GET of bytes ``[start, end)`` into ``fd`` at ``start``: spliced over plain HTTP, else
    read in :data:`STREAM_CHUNK` chunks and written at their offsets; ``progress(n)`` after each step."""
    response = client.get_object(
        bucket, key, offset=start, length=end - start, version_id=version, request_headers=headers
    )
    try:
        body = _plain_socket_body(response)
        length = body[2] if body else int(response.headers.get("Content-Length", -1))
        if length != end - start:  # a server that ignored the Range would send the whole object here
            raise ChecksumMismatchError(
                f"{key}: asked for bytes {start}-{end - 1}, the server answered with {length} bytes"
            )
        if body:
            _splice_into(body[0], body[1], length, fd, progress, offset=start)
            return
        written = 0
        for chunk in response.stream(STREAM_CHUNK):
            view = memoryview(chunk)
            while view:
                n = os.pwrite(fd, view, start + written)
                view, written = view[n:], written + n
            progress(written)
        if written != length:
            raise ConnectionError(f"the server closed the connection after {written} of {length} bytes")
    finally:
        response.close()  # a spliced body leaves the connection unusable: it is closed, not pooled
        response.release_conn()


def get_ranged(
    client: Any,
    bucket: str,
    key: str,
    etag: str | None,
    version: str | None,
    label: str | None,
    size: int,
    ranges: list[tuple[int, int]],
    part_size: int,
    tmp: Path,
    retry: Callable[[Callable[[], None], str], None],
    *,
    sha: bool,
    md5: bool,
    in_flight: int = RANGES_IN_FLIGHT,
    lead: int | None = HASH_LEAD,
) -> Fetched:
    """Fetch an object of ``size`` bytes into ``tmp`` (a new file, its blocks allocated first: :func:`reserve`)
    as ranged GETs, ``in_flight`` at once, each pinned to ``etag`` (``If-Match``: the ranges are of one and
    the same object) and written at its offset. One thread hashes the file's contiguous written prefix in
    order, through a memory map of the page cache (the SHA-256 of the whole with ``sha``, one MD5 per
    ``part_size`` part with ``md5``), so each byte is hashed once, in order, while the later ranges arrive.
    A range that fails is asked again by ``retry(func, what)`` from the byte it stopped at; a range that
    fails for good stops the others and its error is raised (``tmp`` is the caller's to remove). No range
    writes more than ``lead`` bytes past what is hashed (:data:`HASH_LEAD`; None: no bound). Memory: the
    hashing window and one pipe per range in flight, whatever the object's size."""
    hashes = _BodyHashes(sha=sha, md5=md5, part_size=part_size)
    state = _Filled(ranges, lead)
    headers = {"If-Match": f'"{etag}"'} if etag else None
    pending = iter(range(len(ranges)))
    take = threading.Lock()

    def next_range() -> int | None:
        with take:
            return next(pending, None)

    def fetch(index: int) -> None:
        start, end = ranges[index]
        have = state.filled(index)
        if have < end - start:
            state.wait_to_write(start + have)
            _fetch_range(
                client, bucket, key, headers, version, start + have, end, fd, lambda n: state.fill(index, have + n)
            )

    def worker() -> None:
        while (index := next_range()) is not None:
            start, end = ranges[index]
            retry(functools.partial(fetch, index), f"download {bucket}/{key} bytes {start}-{end - 1}")

    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        reserve(fd, size, tmp)  # the hashing thread maps windows of it as they are written
        workers_count = max(1, min(in_flight, len(ranges)))
        with ThreadPoolExecutor(workers_count + 1, thread_name_prefix="e2e3d-range") as pool:
            hashing = pool.submit(_hash_or_abandon, fd, size, hashes, state)
            workers = [pool.submit(worker) for _ in range(workers_count)]
            done, _ = wait(workers, return_when=FIRST_EXCEPTION)
            failed = [f.exception() for f in done if f.exception() is not None]
            if failed:
                state.abandon()
                wait([*workers, hashing])
                errors = [f.exception() for f in (*workers, hashing) if f.exception() is not None]
                raise next((e for e in errors if not isinstance(e, _Abandoned)), errors[0])  # type: ignore[misc]
            hashing.result()
    finally:
        os.close(fd)
    return hashes.fetched(size, label, etag)
