"""Datasets in the ``input`` bucket: content-addressed images named by a dataset manifest.

An image is stored once, at ``.cas/sha256/<2 hex>/<sha256>``, however many datasets hold it; a dataset is
``<dataset>/dataset.json`` naming each of its images (path, size, sha256), written after every image it
names is stored. Objects put straight below ``<dataset>/`` (datasets from before content addressing, or
pre-signed uploads not yet committed) are *loose*: still part of the dataset, and :func:`adopt_loose`
moves them into the content-addressed area (``e2e3d migrate-inputs``, the API's commit).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from e2e3d_provider.core.dataset_manifest import DatasetImage, DatasetManifest
from e2e3d_provider.core.layout import (
    BUCKET_INPUT,
    DATASET_MANIFEST_NAME,
    ID_PATTERN,
    blob_key,
    dataset_manifest_key,
    input_prefix,
    key_relpath,
    validate_id,
)
from e2e3d_provider.core.manifest import sha256_file
from e2e3d_provider.core.transfer import RemoteObject, TransferResult
from e2e3d_provider.exceptions import ObjectNotFoundError
from e2e3d_provider.hooks.storage import StorageHook


def read_dataset(storage: StorageHook, dataset: str, bucket: str = BUCKET_INPUT) -> DatasetManifest | None:
    """The dataset's manifest, or ``None`` when it has none (a dataset of loose objects, or no dataset)."""
    key = dataset_manifest_key(dataset)
    try:
        raw = storage.get_bytes(bucket, key)
    except ObjectNotFoundError:
        return None
    return DatasetManifest.from_json(raw, f"{bucket}/{key}")


def write_dataset(storage: StorageHook, manifest: DatasetManifest, bucket: str = BUCKET_INPUT) -> None:
    """Store the dataset's manifest (the last step of any change to a dataset)."""
    storage.put_bytes(bucket, dataset_manifest_key(manifest.dataset), manifest.to_json().encode(), "application/json")


def loose_objects(storage: StorageHook, dataset: str, bucket: str = BUCKET_INPUT) -> list[RemoteObject]:
    """The objects below ``<dataset>/`` other than its manifest."""
    prefix = input_prefix(dataset)
    return [o for o in storage.list_objects(bucket, prefix) if o.key != prefix + DATASET_MANIFEST_NAME]


@dataclass
class DatasetView:
    """Everything a dataset holds now: images named by its manifest, and loose objects it does not name."""

    dataset: str
    manifest: DatasetManifest | None
    loose: list[RemoteObject]

    @property
    def images(self) -> list[DatasetImage]:
        return self.manifest.images if self.manifest else []

    @property
    def count(self) -> int:
        return len(self.images) + len(self.loose)

    @property
    def total_bytes(self) -> int:
        return sum(i.size for i in self.images) + sum(o.size for o in self.loose)


def dataset_view(storage: StorageHook, dataset: str, bucket: str = BUCKET_INPUT) -> DatasetView:
    """The dataset as a reader sees it: the manifest's images, plus loose objects of paths it does not name."""
    dataset = validate_id(dataset, "dataset")
    manifest = read_dataset(storage, dataset, bucket)
    named = set(manifest.by_path()) if manifest else set()
    prefix = input_prefix(dataset)
    loose = [o for o in loose_objects(storage, dataset, bucket) if key_relpath(o.key, prefix) not in named]
    return DatasetView(dataset, manifest, loose)


def list_datasets(storage: StorageHook, bucket: str = BUCKET_INPUT) -> list[str]:
    """The ids of every dataset in ``bucket`` (its top-level prefixes that are dataset ids)."""
    names = {obj.key.split("/", 1)[0] for obj in storage.list_objects(bucket, "") if "/" in obj.key}
    return sorted(n for n in names if ID_PATTERN.match(n))


def list_datasets_page(
    storage: StorageHook, prefix: str = "", after: str | None = None, limit: int = 50, bucket: str = BUCKET_INPUT
) -> tuple[list[str], bool]:
    """One page of dataset ids in ``bucket`` (its top-level folders that are dataset ids, ``.cas/`` and the
    like skipped) whose id starts with ``prefix``, after the dataset ``after``, in the order object storage
    lists them (by key, ``-`` before ``/``, on S3 and MinIO; by name on SeaweedFS): at most ``limit`` ids, and
    whether more follow.

    One delimiter listing that starts after ``after/``. MinIO and SeaweedFS then skip that folder; a server
    that lists it again (its keys sort after ``after/``) names it once more, first, and it is dropped. The
    listing stops once a page and one more are found, so a page costs about a listing request, whatever the
    bucket holds.
    """
    start_after = after + "/" if after is not None else None

    def page() -> tuple[list[str], bool]:
        names: list[str] = []
        entries = storage.client.list_objects(bucket, prefix=prefix, recursive=False, start_after=start_after)
        for entry in entries:
            name = str(entry.object_name or "")
            if not entry.is_dir or not name.endswith("/"):
                continue
            name = name[:-1]
            if not ID_PATTERN.fullmatch(name) or ".." in name or name == after:
                continue
            if len(names) == limit:
                return names, True
            names.append(name)
        return names, False

    what = f"list datasets {bucket}/{prefix}"
    try:
        return storage.retry.call(page, what)
    except Exception as err:
        raise storage.translate(err, what) from err


def hash_images(images: Iterable[tuple[str, Path]]) -> list[tuple[DatasetImage, Path]]:
    """Each ``(relpath, path)`` with its size and sha256 (one read of each file)."""
    return [(DatasetImage(rel, path.stat().st_size, sha256_file(path)), path) for rel, path in images]


def store_blobs(
    storage: StorageHook,
    hashed: list[tuple[DatasetImage, Path]],
    bucket: str = BUCKET_INPUT,
    on_progress: Callable[[int, int], None] | None = None,
) -> TransferResult:
    """Store each distinct image once under its content key; images already stored move no bytes."""
    by_sha: dict[str, Path] = {}
    for image, path in hashed:
        by_sha.setdefault(image.sha256, path)
    items = [(blob_key(sha), path) for sha, path in sorted(by_sha.items())]
    return storage.upload_objects(bucket, items, checksums={blob_key(s): s for s in by_sha}, on_progress=on_progress)


def stored_blobs(storage: StorageHook, shas: Iterable[str], bucket: str = BUCKET_INPUT) -> set[str]:
    """Which of ``shas`` the bucket holds a blob of (one HEAD each)."""
    return {sha for sha in set(shas) if storage.exists(bucket, blob_key(sha))}


@dataclass
class Adopted:
    """What :func:`adopt_loose` did to one dataset."""

    dataset: str
    adopted: int = 0
    new_blobs: int = 0
    deduplicated: int = 0
    bytes: int = 0
    removed: list[str] = field(default_factory=list)
    #: loose objects that are not images ("<relpath>: <why>"): not adopted, left as they are
    rejected: list[str] = field(default_factory=list)


def image_problem(path: Path) -> str | None:
    """Why the file at ``path`` is not an input image, or None: Pillow must identify and verify its bytes
    (a name ending in ``.jpg`` proves nothing). One check for ingest and for an upload commit."""
    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"not a readable image: {err}"
    return None


def adopt_loose(
    storage: StorageHook,
    dataset: str,
    bucket: str = BUCKET_INPUT,
    reuse: Iterable[DatasetImage] = (),
) -> Adopted:
    """Move a dataset's loose objects into the content-addressed area and name them in its manifest.

    Each loose object is read once and hashed here (its own sha256 label is never trusted), copied
    server-side to its blob key while it still has the ETag that was read (skipped when the blob exists),
    then the manifest (with ``reuse``: images of blobs already stored, as a client that skipped their upload
    declares them) is written, and only then are the loose objects removed. A run stopped anywhere leaves
    the dataset readable and is finished by running again. A loose object that is not an image (whatever
    its name says) is not adopted: it stays where it is, named in ``rejected``."""
    dataset = validate_id(dataset, "dataset")
    prefix = input_prefix(dataset)
    result = Adopted(dataset)
    reused = list(reuse)
    blobs = {i.sha256: storage.stat(bucket, blob_key(i.sha256)) for i in reused}
    missing = sorted(i.sha256 for i in reused if getattr(blobs[i.sha256], "size", None) != i.size)
    if missing:
        raise ObjectNotFoundError(
            f"dataset {dataset!r}: no stored image has sha256 {missing[0]} with the size given ({len(missing)} "
            "such); upload those images instead of reusing them"
        )
    images: list[DatasetImage] = []
    loose = loose_objects(storage, dataset, bucket)
    loose_rejected: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="e2e3d-adopt-") as scratch:
        for obj in loose:
            rel = key_relpath(obj.key, prefix)
            local = Path(scratch) / "object"
            storage.download_file(bucket, obj.key, local, size=obj.size)
            sha, size = sha256_file(local), local.stat().st_size  # what was read, not what was listed
            problem = image_problem(local)
            local.unlink()
            if problem:
                result.rejected.append(f"{rel}: {problem}")
                loose_rejected.add(obj.key)
                continue
            target = blob_key(sha)
            if storage.exists(bucket, target):
                result.deduplicated += 1
            else:
                storage.copy_object(bucket, obj.key, bucket, target, if_match=obj.etag, size=obj.size)
                result.new_blobs += 1
                result.bytes += obj.size
            images.append(DatasetImage(rel, size, sha))
    if not images and not reused:
        return result
    current = read_dataset(storage, dataset, bucket) or DatasetManifest(dataset, [])
    write_dataset(storage, current.merged([*reused, *images]), bucket)
    for obj in (o for o in loose if o.key not in loose_rejected):
        now = storage.stat(bucket, obj.key)
        if now is not None and now.etag != obj.etag:  # replaced since it was read: not what was adopted
            continue
        storage.delete_object(bucket, obj.key)
        result.removed.append(obj.key)
    result.adopted = len(images) + len(reused)
    return result
