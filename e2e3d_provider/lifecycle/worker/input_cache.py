"""This host's read-through cache of input images, content-addressed, and the staged datasets built from it.

Each image this host has fetched lies once in ``<root>/cache/sha256/<2 hex>/<sha256>``, whatever dataset
it came from; a staged dataset ``<root>/input/<dataset>/`` is a folder of hard links into the cache, so
staging a second dataset fetches only the images this host has not seen. A cached image is sealed when
admitted (read-only, its mtime set to :data:`SEALED_MTIME_NS`): a write through any link moves its mtime,
and the next use hashes it again and fetches it anew if it changed. The cache is bounded by
:func:`trim` (size and age), which never removes a staged dataset that a task is reading.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from e2e3d_provider.core.dataset_manifest import DatasetImage
from e2e3d_provider.core.layout import (
    BLOB_AREA,
    BUCKET_INPUT,
    CACHE_DIR,
    cache_blob_path,
    dataset_manifest_key,
    input_dir,
    input_prefix,
    key_relpath,
    local_path_for,
    sharded_sha_path,
    validate_id,
)
from e2e3d_provider.core.local_paths import mirror_lock, reader_lock_path, remove_tree, writer_lock_path
from e2e3d_provider.core.manifest import sha256_file
from e2e3d_provider.core.transfer import PARTIAL_SUFFIX, TransferResult, iter_local_files, partial_path
from e2e3d_provider.exceptions import MissingInputError
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.inputs.datasets import dataset_view

log = logging.getLogger(__name__)

#: seconds after its last use (a dataset) or admission (an image) that the trim never takes it
GRACE_SECONDS = 600.0
#: the mtime of a verified cache entry (2000-01-01T00:00:00Z); any write through a link moves it
SEALED_MTIME_NS = 946_684_800 * 1_000_000_000


def blobs_dir(root: Path) -> Path:
    return root / CACHE_DIR / "sha256"


def loose_dir(root: Path, dataset: str) -> Path:
    """Where this host mirrors a dataset's loose objects (by ETag) before hashing them into the cache."""
    return root / CACHE_DIR / "loose" / validate_id(dataset, "dataset")


def seal(path: Path) -> None:
    """Mark a verified cache entry: read-only, mtime sealed, atime = now (its last use)."""
    os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    os.utime(path, ns=(time.time_ns(), SEALED_MTIME_NS))


def holds(root: Path, image: DatasetImage) -> bool:
    """True when the cache holds the image's bytes. A sealed entry of the right size is trusted; one whose
    seal was broken (written through a link) is hashed: resealed if its bytes are intact, else removed."""
    path = cache_blob_path(root, image.sha256)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != image.size:
        path.unlink()
        return False
    if st.st_mtime_ns != SEALED_MTIME_NS and sha256_file(path) != image.sha256:
        log.warning("cache entry %s was modified in place; it is fetched again", path)
        path.unlink()
        return False
    seal(path)
    return True


def admit(root: Path, source: Path, sha256: str) -> Path:
    """Put a file whose bytes hash to ``sha256`` into the cache (a hard link when it can be) and seal it."""
    target = cache_blob_path(root, sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not holds(root, DatasetImage("", source.stat().st_size, sha256)):  # absent, or damaged in place
        place(source, target)
    seal(target)
    return target


def place(source: Path, target: Path) -> None:
    """Make ``target`` a hard link to ``source`` (a copy where links cannot be made), atomically: a reader
    sees the old file or the new one, never a half-written one."""
    tmp = partial_path(target, threading.get_ident())
    tmp.unlink(missing_ok=True)  # left by a crash
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def link_view(root: Path, local: Path, files: Mapping[str, str]) -> int:
    """Make ``local`` exactly ``files`` (relpath -> sha256), each a hard link to its cache entry (a copy
    where links cannot be made); entries already linked are left alone, others are replaced atomically,
    and files not named are removed. Returns how many files it removed."""
    local.mkdir(parents=True, exist_ok=True)
    for rel, sha in files.items():
        target, blob = local_path_for(local, rel), cache_blob_path(root, sha)
        try:
            if os.path.samefile(target, blob):
                continue
        except FileNotFoundError:
            pass
        target.parent.mkdir(parents=True, exist_ok=True)
        place(blob, target)
    removed = 0
    for rel, path in iter_local_files(local):
        if rel not in files:
            path.unlink()
            removed += 1
    return removed


@dataclass
class Staged:
    """What staging a dataset on this host did: where it is and what moved."""

    dataset: str
    local_dir: Path
    transfer: TransferResult
    files: dict[str, str] = field(default_factory=dict, repr=False)
    #: the dataset's manifest key in the bucket, or None for a dataset of loose objects only
    manifest_key: str | None = None


def stage_dataset(storage: StorageHook, root: Path, dataset: str, bucket: str = BUCKET_INPUT) -> Staged:
    """Make ``<root>/input/<dataset>/`` the dataset as stored now, through this host's cache: only images
    the cache does not hold are fetched (each checked against its sha256), then the folder is relinked.
    Loose objects (a dataset from before content addressing) are mirrored by ETag and hashed into the
    cache. A dataset with no images is :class:`MissingInputError`."""
    dataset = validate_id(dataset, "dataset")
    view = dataset_view(storage, dataset, bucket)
    if not view.count:
        raise MissingInputError(
            f"dataset {dataset!r} has no images in bucket {bucket!r} (no {input_prefix(dataset)}dataset.json and "
            f"no objects below {input_prefix(dataset)}); upload it first (e2e3d ingest)"
        )
    local = input_dir(root, dataset)
    moved = TransferResult("download", bucket, input_prefix(dataset))
    with mirror_lock(local):  # another task staging this dataset here waits its turn
        distinct = {image.sha256: image for image in view.images}
        wanted = {sharded_sha_path(sha): (image.size, sha) for sha, image in distinct.items() if not holds(root, image)}
        files = {image.path: image.sha256 for image in view.images}
        if wanted:
            fetched = storage.download_prefix(bucket, BLOB_AREA + "/", blobs_dir(root), expected=wanted)
            moved.files, moved.bytes, moved.seconds = fetched.files, fetched.bytes, fetched.seconds
            for _, sha in wanted.values():
                seal(cache_blob_path(root, sha))
        moved.skipped_files = len(view.images) - len(wanted)
        moved.skipped_bytes = view.total_bytes - sum(o.size for o in view.loose) - moved.bytes
        if view.loose:
            files.update(_stage_loose(storage, root, dataset, bucket, moved, {o.key for o in view.loose}))
        moved.removed_files = link_view(root, local, files)
    return Staged(dataset, local, moved, files, dataset_manifest_key(dataset) if view.manifest else None)


def _stage_loose(
    storage: StorageHook, root: Path, dataset: str, bucket: str, moved: TransferResult, keys: set[str]
) -> dict[str, str]:
    """Mirror the loose objects by ETag (unchanged ones move nothing), hash each into the cache."""
    prefix = input_prefix(dataset)
    mirror = loose_dir(root, dataset)
    fetched = storage.download_prefix(bucket, prefix, mirror, delete_extraneous=True)
    moved.files += fetched.files
    moved.bytes += fetched.bytes
    moved.skipped_files += fetched.skipped_files
    moved.skipped_bytes += fetched.skipped_bytes
    moved.seconds += fetched.seconds
    files = {}
    for key in sorted(keys):
        rel = key_relpath(key, prefix)
        path = local_path_for(mirror, rel)
        sha = sha256_file(path)
        admit(root, path, sha)
        files[rel] = sha
    return files


@contextmanager
def reading(local_dir: Path) -> Iterator[None]:
    """Hold a reader's (shared) lock on a staged dataset for the block: :func:`trim` never removes it then."""
    path = reader_lock_path(local_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        yield


@dataclass
class TrimResult:
    """What :func:`trim` removed and what the cache holds afterwards."""

    removed_datasets: list[str] = field(default_factory=list)
    removed_blobs: int = 0
    freed_bytes: int = 0
    held_bytes: int = 0
    busy: list[str] = field(default_factory=list)
    #: downloads into the cache under way (partial files): counted in ``held_bytes``, never removed here
    partial_files: int = 0
    partial_bytes: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "removed_datasets": self.removed_datasets,
            "removed_blobs": self.removed_blobs,
            "freed_bytes": self.freed_bytes,
            "held_bytes": self.held_bytes,
            "busy": self.busy,
            "partial_files": self.partial_files,
            "partial_bytes": self.partial_bytes,
        }


def _partials(root: Path) -> list[os.stat_result]:
    """The partial files of downloads into the cache (the sweep removes those whose process is gone)."""
    found = []
    for path in (root / CACHE_DIR).rglob(f"*{PARTIAL_SUFFIX}"):
        try:
            found.append(path.lstat())
        except FileNotFoundError:
            continue
    return found


def _blobs(root: Path) -> list[tuple[Path, os.stat_result]]:
    found = []
    for path in blobs_dir(root).glob("*/*"):
        if path.name.startswith("."):  # a partial file: counted by _partials
            continue
        try:
            found.append((path, path.lstat()))
        except FileNotFoundError:
            continue
    return found


def _last_use(local: Path) -> float:
    try:
        return writer_lock_path(local).stat().st_mtime
    except FileNotFoundError:
        return 0.0


@contextmanager
def _exclusive(local: Path) -> Iterator[bool]:
    """Both of a staged dataset's locks, without waiting: True when nobody stages or reads it now."""
    handles = []
    try:
        for path in (writer_lock_path(local), reader_lock_path(local)):
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a")  # noqa: SIM115 - closed below, with its lock
            handles.append(handle)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
        yield True
    finally:
        for handle in handles:
            handle.close()


def trim(root: Path, max_bytes: int, max_age_hours: float, now: float | None = None) -> TrimResult:
    """Bound this host's cache: staged datasets unused for ``max_age_hours`` go (unless a task is staging or
    reading them), then cache entries no staged dataset links to go, oldest use first, while the cache
    holds more than ``max_bytes`` or they are older than ``max_age_hours``; if it is still over, the least
    recently used staged datasets go too (they are staged again, from the cache or the bucket, on next use).
    Partial files of downloads into the cache count towards ``max_bytes`` (they take the disk all the same);
    they are removed by their transfer, or by the host sweep once their process is gone."""
    now = time.time() if now is None else now
    result = TrimResult()
    partials = _partials(root)
    result.partial_files, result.partial_bytes = len(partials), sum(st.st_size for st in partials)
    max_age = max_age_hours * 3600
    inputs = root / "input"
    staged = sorted((p for p in inputs.iterdir() if p.is_dir()), key=_last_use) if inputs.is_dir() else []

    def drop_dataset(local: Path) -> bool:
        with _exclusive(local) as free:
            if not free:
                result.busy.append(local.name)
                return False
            remove_tree(local)
            remove_tree(loose_dir(root, local.name))
            result.removed_datasets.append(local.name)
            return True

    for local in list(staged):
        if now - _last_use(local) >= max_age and drop_dataset(local):
            staged.remove(local)

    def drop_unlinked() -> int:
        blobs = _blobs(root)
        held = sum(st.st_size for _, st in blobs) + result.partial_bytes
        for path, st in sorted(blobs, key=lambda b: b[1].st_atime):
            if st.st_nlink > 1:
                continue  # a staged dataset links to it
            if now - st.st_ctime < GRACE_SECONDS:
                continue  # just fetched or checked: a staging may be about to link it
            if held <= max_bytes and now - st.st_atime < max_age:
                continue
            path.unlink(missing_ok=True)
            held -= st.st_size
            result.removed_blobs += 1
            result.freed_bytes += st.st_size
        return held

    held = drop_unlinked()
    while held > max_bytes and staged:
        local = staged.pop(0)
        if now - _last_use(local) < GRACE_SECONDS:
            break  # the rest were used just now: never take a dataset a task is about to read
        if drop_dataset(local):
            held = drop_unlinked()
    result.held_bytes = held
    return result
