"""InputPresenceSensor: waits until a dataset's input images are all there and no longer changing."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import PokeReturnValue

from e2e3d_provider.input_check import DEFAULT_PATTERNS, check_input
from e2e3d_provider.layout import BUCKET_INPUT, input_prefix, validate_bucket
from e2e3d_provider.sensors.base import StorageSensor
from e2e3d_provider.triggers.object_storage import InputPresenceTrigger


class InputPresenceSensor(StorageSensor):
    """Waits until ``<dataset>/`` in ``bucket`` (default ``input``) holds at least ``min_files``
    objects matching ``patterns`` and, with ``stable_for`` > 0, none of them changed in the last
    ``stable_for`` seconds, so an upload still in progress does not fire it.

    Returns ``{"prefix", "count", "bytes"}``. Stability is judged from the objects' last-modified
    times against this host's clock, so it behaves the same in poke, reschedule and deferrable modes.

    :param dataset: dataset id (templated).
    :param patterns: file-name globs, case-insensitive (default: common image types).
    :param min_files: how many matching objects make the dataset present.
    :param stable_for: seconds without change required before firing (0: fire at once).
    """

    template_fields: Sequence[str] = ("dataset", "bucket")
    ui_color = "#c5d8e8"

    def __init__(self, *, dataset: str, bucket: str = BUCKET_INPUT, patterns: Sequence[str] = DEFAULT_PATTERNS,
                 min_files: int = 1, stable_for: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if min_files < 1:
            raise ValueError("min_files must be at least 1")
        if stable_for < 0:
            raise ValueError("stable_for must not be negative")
        self.dataset = dataset
        self.bucket = bucket
        self.patterns = list(patterns)
        self.min_files = min_files
        self.stable_for = stable_for

    def poke(self, context: Any) -> PokeReturnValue:
        prefix = input_prefix(self.dataset)
        objects = self.hook.list_objects(validate_bucket(self.bucket), prefix)
        state = check_input(objects, prefix, self.patterns, self.min_files, self.stable_for, datetime.now(UTC))
        self.log.info("%s: %s", "ready" if state.ready else "not ready", state.reason)
        return PokeReturnValue(state.ready, state.to_xcom())

    def make_trigger(self) -> InputPresenceTrigger:
        return InputPresenceTrigger(validate_bucket(self.bucket), input_prefix(self.dataset), self.patterns,
                                    self.min_files, self.stable_for, self.minio_conn_id, float(self.poke_interval))
