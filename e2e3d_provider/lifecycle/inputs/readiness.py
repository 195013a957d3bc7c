"""Input readiness through the hook: one call serves the sensor in every mode and its trigger."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from e2e3d_provider.core.dataset_manifest import DatasetManifest
from e2e3d_provider.core.layout import DATASET_MANIFEST_NAME, normalize_prefix, validate_bucket
from e2e3d_provider.core.readiness import DEFAULT_PATTERNS, InputState, check_input

__all__ = ["DEFAULT_PATTERNS", "InputState", "input_state", "marker_present"]
from e2e3d_provider.core.transfer import RemoteObject
from e2e3d_provider.hooks.storage import StorageHook


def input_state(
    storage: StorageHook,
    bucket: str,
    prefix: str,
    patterns: Sequence[str],
    min_files: int,
    stable_for: float,
    now: datetime | None = None,
) -> InputState:
    """What ``<bucket>/<prefix>`` holds now and whether that makes it ready (one listing). A dataset
    manifest there counts each image it names (as changed when the manifest was written), beside the
    loose objects of paths it does not name."""
    prefix = normalize_prefix(prefix)
    objects = storage.list_objects(validate_bucket(bucket), prefix)
    listed = {obj.key: obj for obj in objects}
    manifest_obj = listed.pop(prefix + DATASET_MANIFEST_NAME, None)
    if manifest_obj is not None:
        where = f"{bucket}/{manifest_obj.key}"
        manifest = DatasetManifest.from_json(storage.get_bytes(bucket, manifest_obj.key), where)
        for image in manifest.images:
            key = prefix + image.path
            listed[key] = RemoteObject(key=key, size=image.size, last_modified=manifest_obj.last_modified)
    return check_input(list(listed.values()), prefix, patterns, min_files, stable_for, now or datetime.now(UTC))


def marker_present(storage: StorageHook, bucket: str, key: str) -> bool:
    """True once ``bucket/key`` exists; a missing bucket is an error, not something to wait for."""
    storage.require_bucket(validate_bucket(bucket))
    return storage.exists(bucket, key)
