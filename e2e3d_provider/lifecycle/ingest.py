"""Ingest: a local folder of images into the ``input`` bucket as a dataset, with checksums."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from e2e3d_provider.core.layout import BUCKET_INPUT, input_prefix, validate_id
from e2e3d_provider.core.readiness import IMAGE_SUFFIXES
from e2e3d_provider.core.transfer import TransferResult, iter_local_files
from e2e3d_provider.exceptions import E2E3DError, IngestIncompleteError, InvalidInputError
from e2e3d_provider.hooks.storage import StorageHook


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
        try:
            with Image.open(path) as img:
                img.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            rejected.append((rel, f"not a readable image: {err}"))
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
    """Upload every image below ``directory`` to ``<bucket>/<dataset>/``; files already there with the
    same sha256 are skipped. Any non-image file fails the whole ingest (nothing is uploaded) unless
    ``skip_invalid``. An ingest that stops part-way raises :class:`IngestIncompleteError` saying how many
    images are stored; rerunning it sends only the rest. ``on_progress(done, total)`` follows each file."""
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
    prefix = input_prefix(dataset)
    try:
        return storage.upload_dir(directory, bucket, prefix, files=images, on_progress=on_progress)
    except (E2E3DError, OSError) as err:
        wanted = {prefix + rel for rel, _ in images}
        try:
            stored = f"{len(wanted & set(storage.list_keys(bucket, prefix)))} of {len(images)}"
        except E2E3DError:  # the store is gone too: say what we know
            stored = f"an unknown number (the listing failed too) of {len(images)}"
        raise IngestIncompleteError(
            f"ingest of {directory} into {bucket}/{prefix} stopped: {stored} images are stored. Rerun the same "
            f"command to send the rest (stored identical images are skipped). Cause: {err}"
        ) from err
