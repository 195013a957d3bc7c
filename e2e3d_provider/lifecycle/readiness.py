"""Input readiness through the hook: one call serves the sensor in every mode and its trigger."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from e2e3d_provider.core.layout import normalize_prefix, validate_bucket
from e2e3d_provider.core.readiness import DEFAULT_PATTERNS, InputState, check_input

__all__ = ["DEFAULT_PATTERNS", "InputState", "input_state", "marker_present"]
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
    """What ``<bucket>/<prefix>`` holds now and whether that makes it ready (one listing)."""
    prefix = normalize_prefix(prefix)
    objects = storage.list_objects(validate_bucket(bucket), prefix)
    return check_input(objects, prefix, patterns, min_files, stable_for, now or datetime.now(UTC))


def marker_present(storage: StorageHook, bucket: str, key: str) -> bool:
    """True once ``bucket/key`` exists; a missing bucket is an error, not something to wait for."""
    storage.require_bucket(validate_bucket(bucket))
    return storage.exists(bucket, key)
