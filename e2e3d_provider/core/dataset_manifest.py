"""A dataset as a manifest of content-addressed images (``input/<dataset>/dataset.json``).

Each distinct image is stored once in ``input`` under its sha256 (:func:`~e2e3d_provider.core.layout.blob_key`);
a dataset names its images (path, size, sha256). Two datasets sharing images share their blobs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from e2e3d_provider.core.layout import validate_id, validate_relpath, validate_sha256
from e2e3d_provider.exceptions import InvalidNameError, ManifestError

DATASET_MANIFEST_VERSION = 1


@dataclass(frozen=True)
class DatasetImage:
    """One image of a dataset: its path in the dataset, its size in bytes and the hex sha256 of its bytes."""

    path: str
    size: int
    sha256: str


@dataclass
class DatasetManifest:
    """Every image of a dataset, by content."""

    dataset: str
    images: list[DatasetImage]
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    version: int = DATASET_MANIFEST_VERSION

    @property
    def total_bytes(self) -> int:
        return sum(image.size for image in self.images)

    def by_path(self) -> dict[str, DatasetImage]:
        return {image.path: image for image in self.images}

    def merged(self, images: Iterable[DatasetImage]) -> DatasetManifest:
        """This manifest with ``images`` added; an image of a path already named replaces it."""
        merged = self.by_path()
        merged.update({image.path: image for image in images})
        return DatasetManifest(self.dataset, sorted(merged.values(), key=lambda i: i.path))

    def to_json(self) -> str:
        data = {
            "version": self.version,
            "dataset": self.dataset,
            "created_at": self.created_at,
            "files": [{"path": i.path, "size": i.size, "sha256": i.sha256} for i in self.images],
        }
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, raw: bytes | str, where: str = "dataset.json") -> DatasetManifest:
        """Parse and validate; anything malformed is a :class:`ManifestError` naming ``where``."""
        try:
            data: Any = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != DATASET_MANIFEST_VERSION:
                raise ValueError(f"expected an object with version {DATASET_MANIFEST_VERSION}")
            images = [
                DatasetImage(validate_relpath(f["path"]), int(f["size"]), validate_sha256(f["sha256"]))
                for f in data["files"]
            ]
            manifest = cls(validate_id(data["dataset"], "dataset"), images, str(data.get("created_at", "")))
        except (ValueError, KeyError, TypeError, InvalidNameError) as err:
            raise ManifestError(f"{where} is not a valid dataset manifest: {err}") from err
        paths = [image.path for image in images]
        if len(set(paths)) != len(paths):
            raise ManifestError(f"{where} names a path twice")
        if any(image.size < 0 for image in images):
            raise ManifestError(f"{where} gives a negative size")
        return manifest
