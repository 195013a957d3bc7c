"""Ingest: a local folder of images into the ``input`` bucket as a content-addressed dataset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from e2e3d_provider.core.dataset_manifest import DatasetManifest
from e2e3d_provider.core.layout import BUCKET_INPUT, input_prefix, validate_id
from e2e3d_provider.core.readiness import IMAGE_SUFFIXES
from e2e3d_provider.core.transfer import TransferResult, iter_local_files
from e2e3d_provider.exceptions import E2E3DError, IngestIncompleteError, InvalidInputError
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.inputs.datasets import (
    hash_images,
    image_problem,
    read_dataset,
    store_blobs,
    stored_blobs,
    write_dataset,
)


def classify(directory: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """Split the files below ``directory`` into images and ``(relpath, reason)`` rejects.

    An image has an image suffix and bytes Pillow can identify and verify as an image.
    """
    images, rejected = [], []
    for rel, path in iter_local_files(directory):
        if rel.rsplit("/", 1)[-1].startswith("."):
            continue  # hidden files (.DS_Store and friends) are not data
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            rejected.append((rel, f"not an image file name (expected {', '.join(IMAGE_SUFFIXES)})"))
            continue
        problem = image_problem(path)
        if problem:
            rejected.append((rel, problem))
            continue
        images.append((rel, path))
    return images, rejected


def ingest(
    storage: StorageHook,
    directory: str | Path,
    dataset: str,
    *,
    bucket: str = BUCKET_INPUT,
    skip_invalid: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> TransferResult:
    """Store every image below ``directory`` as the dataset ``dataset``: each distinct image once, under
    its sha256 in ``<bucket>/.cas/``, then the dataset's manifest (``<dataset>/dataset.json``) naming them,
    written last. Images already stored (by this or any other dataset) move no bytes. Any non-image file
    fails the whole ingest (nothing is uploaded) unless ``skip_invalid``. An ingest that stops part-way
    raises :class:`IngestIncompleteError` saying how many images are stored; rerunning it sends only the
    rest. ``on_progress(done, total)`` follows each distinct image. Ingesting into an existing dataset adds
    to it (an image of the same path is replaced)."""
    dataset = validate_id(dataset, "dataset")
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidInputError(f"{directory} is not a directory")
    images, rejected = classify(directory)
    if rejected and not skip_invalid:
        shown = "; ".join(f"{rel}: {reason}" for rel, reason in rejected[:10])
        more = f" (+{len(rejected) - 10} more)" if len(rejected) > 10 else ""
        raise InvalidInputError(
            f"{len(rejected)} file(s) in {directory} are not images, nothing was uploaded: "
            f"{shown}{more}. Remove them or pass --skip-invalid."
        )
    if not images:
        raise InvalidInputError(f"no images in {directory}")
    hashed = hash_images(images)
    try:
        result = store_blobs(storage, hashed, bucket, on_progress)
        current = read_dataset(storage, dataset, bucket) or DatasetManifest(dataset, [])
        write_dataset(storage, current.merged(image for image, _ in hashed), bucket)
    except (E2E3DError, OSError) as err:
        try:
            count = len(stored_blobs(storage, (image.sha256 for image, _ in hashed), bucket))
            stored = f"{count} of {len({image.sha256 for image, _ in hashed})}"
        except E2E3DError:  # the store is gone too: say what we know
            stored = f"an unknown number (the check failed too) of {len(hashed)}"
        raise IngestIncompleteError(
            f"ingest of {directory} as dataset {dataset!r} into {bucket} stopped: {stored} images are stored. "
            f"Rerun the same command to send the rest (stored identical images are skipped). Cause: {err}"
        ) from err
    result.prefix = input_prefix(dataset)
    return result
