"""Write-back: a producer's files go to object storage while it is still writing the rest.

A watcher thread scans the run directory every ``interval`` seconds; a file whose size and mtime have not
changed for ``settle`` seconds is uploaded to the run's hand-off prefix by a bounded pool (``concurrency``
files in flight, each within the transfer engine's memory budget). When the producer returns,
:meth:`WriteBack.finish` uploads whatever is new or changed since (a file rewritten after its early upload
is sent again), checks every object against what was sent (size and the server's ETag, by one listing)
and only then writes ``handoff.json``. A producer that fails leaves no ``handoff.json``, so nothing reads
or publishes its partial files, and its rerun sends only what the prefix does not already hold.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from e2e3d_provider.core.layout import BUCKET_OUTPUT, HANDOFF_NAME, work_prefix
from e2e3d_provider.core.transfer import TransferResult
from e2e3d_provider.exceptions import ChecksumMismatchError, TransferError
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.results.handoff import HandOff, handed_files, seal_handoff

log = logging.getLogger(__name__)

Signature = tuple[int, int]  # (size, mtime_ns): a file unchanged since is not read again


@dataclass
class _Sent:
    signature: Signature
    size: int
    sha256: str
    etag: str | None
    sent: bool


@dataclass
class WriteBackStats:
    """What the watcher sent while the producer ran, and what was left for the final flush."""

    early_files: int = 0
    early_bytes: int = 0
    flushed_files: int = 0
    flushed_bytes: int = 0
    resent_files: int = 0
    errors: list[str] = field(default_factory=list)


class WriteBack:
    """Upload a run directory to its hand-off prefix while a producer writes it (use as a context manager
    around the producer, then call :meth:`finish`)."""

    def __init__(
        self,
        storage: StorageHook,
        run_dir: Path,
        job_id: str,
        stamp: str,
        *,
        bucket: str = BUCKET_OUTPUT,
        settle: float = 1.0,
        interval: float = 0.5,
        concurrency: int = 4,
    ) -> None:
        self.storage, self.run_dir, self.job_id, self.stamp, self.bucket = storage, run_dir, job_id, stamp, bucket
        self.prefix = work_prefix(job_id, stamp)
        self.settle, self.interval = settle, interval
        self.stats = WriteBackStats()
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="e2e3d-write-back")
        self._seen: dict[str, tuple[Signature, float]] = {}
        self._sent: dict[str, _Sent] = {}
        self._inflight: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="e2e3d-write-back-watch", daemon=True)

    def __enter__(self) -> WriteBack:
        # the run directory is about to change: an earlier hand-off of this run is no longer the truth
        self.storage.delete_object(self.bucket, self.prefix + HANDOFF_NAME)
        self._watcher.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._watcher.join()
        # uploads in flight end; a failed producer's queued ones are dropped (no handoff.json is written anyway)
        self._pool.shutdown(wait=True, cancel_futures=exc_type is not None)

    # -- the watcher -----------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._scan()
            except Exception as err:  # a file vanishing mid-scan, an unreadable folder: the flush decides
                log.debug("write-back scan of %s: %s", self.run_dir, err)

    def _scan(self) -> None:
        now = time.monotonic()
        for rel, path in handed_files(self.run_dir):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            signature = (st.st_size, st.st_mtime_ns)
            seen = self._seen.get(rel)
            if seen is None or seen[0] != signature:
                self._seen[rel] = (signature, now)
                continue
            with self._lock:
                done = self._sent.get(rel)
                busy = rel in self._inflight
            if busy or (done is not None and done.signature == signature) or now - seen[1] < self.settle:
                continue
            with self._lock:
                self._inflight[rel] = self._pool.submit(self._upload, rel, path, signature)

    def _upload(self, rel: str, path: Path, signature: Signature) -> None:
        try:
            sent = self.storage.send_file(path, self.bucket, self.prefix + rel)
            with self._lock:  # noted under the signature the scan saw: a file changed since is sent again
                self._sent[rel] = _Sent(signature, sent.size, sent.sha256, sent.etag, sent.sent)
                if sent.sent:
                    self.stats.early_files += 1
                    self.stats.early_bytes += sent.size
        except Exception as err:  # retried by the final flush; never fails the producer
            self.stats.errors.append(f"{rel}: {type(err).__name__}: {err}")
            log.warning("write-back of %s deferred to the final flush: %s", rel, err)
        finally:
            with self._lock:
                self._inflight.pop(rel, None)

    # -- the end ---------------------------------------------------------------------------------

    def finish(self) -> tuple[HandOff, TransferResult]:
        """After the producer returned (and the context exited): send what is new or changed, verify every
        object against what was sent, and write ``handoff.json``. Returns the hand-off and what moved."""
        if self._watcher.is_alive():
            raise RuntimeError("WriteBack.finish() runs after the producer's block has exited")
        files = handed_files(self.run_dir)
        if not files:
            raise FileNotFoundError(f"run directory {self.run_dir} holds nothing to hand on")
        stored: dict[str, tuple[int, str, str | None]] = {}
        pending: list[tuple[str, Path]] = []
        for rel, path in files:
            st = path.stat()
            done = self._sent.get(rel)
            if done is not None and done.signature == (st.st_size, st.st_mtime_ns):
                stored[rel] = (done.size, done.sha256, done.etag)
            else:
                pending.append((rel, path))
                self.stats.resent_files += int(done is not None)
        result = TransferResult("upload", self.bucket, self.prefix)
        if pending:
            flushed = self.storage.upload_dir(self.run_dir, self.bucket, self.prefix, files=pending)
            stored.update(flushed.checksums)
            self.stats.flushed_files, self.stats.flushed_bytes = flushed.files, flushed.bytes
            result.seconds = flushed.seconds
            result.skipped_files, result.skipped_bytes = flushed.skipped_files, flushed.skipped_bytes
        self._verify(stored)
        early_skipped = [s for r, s in self._sent.items() if r in stored and not s.sent and r not in dict(pending)]
        result.files = self.stats.early_files + self.stats.flushed_files
        result.bytes = self.stats.early_bytes + self.stats.flushed_bytes
        result.skipped_files += len(early_skipped)
        result.skipped_bytes += sum(s.size for s in early_skipped)
        result.checksums = stored
        handed = seal_handoff(self.storage, self.job_id, self.stamp, stored, result.bytes, self.bucket)
        return handed, result

    def _verify(self, stored: dict[str, tuple[int, str, str | None]]) -> None:
        """Every file's object is there with the size and ETag its upload got back (one listing)."""
        listed = {obj.key: obj for obj in self.storage.list_objects(self.bucket, self.prefix)}
        wrong = []
        for rel, (size, _, etag) in stored.items():
            obj = listed.get(self.prefix + rel)
            if obj is None or obj.size != size or (etag and obj.etag != etag):
                wrong.append(rel)
        if wrong:
            raise TransferError(
                f"write-back to {self.bucket}/{self.prefix}: {len(wrong)} object(s) are not what was sent "
                f"({', '.join(sorted(wrong)[:5])}); no handoff.json was written. Rerun the task: it sends only "
                "what is missing.",
                {rel: ChecksumMismatchError(f"{self.prefix}{rel} differs from what was sent") for rel in wrong},
            )
