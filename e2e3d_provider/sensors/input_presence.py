"""InputPresenceSensor: waits until a dataset's input images are all there and no longer changing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context, PokeReturnValue

from e2e3d_provider.core.layout import BUCKET_INPUT, input_prefix, validate_bucket
from e2e3d_provider.lifecycle.inputs.readiness import DEFAULT_PATTERNS, input_state
from e2e3d_provider.links import LIFECYCLE_LINKS
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
    :param min_files: how many matching objects make the dataset present (templated).
    :param stable_for: seconds without change required before firing (0: fire at once; templated).
    """

    template_fields: Sequence[str] = ("dataset", "bucket", "min_files", "stable_for")
    ui_color = "#c5d8e8"
    #: "View", "Results" and "Dashboard", as on the lifecycle's operators
    operator_extra_links = LIFECYCLE_LINKS

    def __init__(
        self,
        *,
        dataset: str,
        bucket: str = BUCKET_INPUT,
        patterns: Sequence[str] = DEFAULT_PATTERNS,
        min_files: int | str = 1,
        stable_for: float | str = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(min_files, str) or not isinstance(stable_for, str):
            self._limits(min_files, stable_for)  # plain values are checked while parsing the DAG
        self.dataset = dataset
        self.bucket = bucket
        self.patterns = list(patterns)
        self.min_files = min_files
        self.stable_for = stable_for

    @staticmethod
    def _limits(min_files: int | str, stable_for: float | str) -> tuple[int, float]:
        """``min_files`` and ``stable_for`` as numbers (they may arrive rendered from templates)."""
        count, quiet = int(min_files), float(stable_for)
        if count < 1:
            raise ValueError("min_files must be at least 1")
        if quiet < 0:
            raise ValueError("stable_for must not be negative")
        return count, quiet

    def poke(self, context: Context) -> PokeReturnValue:
        min_files, stable_for = self._limits(self.min_files, self.stable_for)
        state = input_state(self.hook, self.bucket, input_prefix(self.dataset), self.patterns, min_files, stable_for)
        self.log.info("%s: %s", "ready" if state.ready else "not ready", state.reason)
        return PokeReturnValue(state.ready, state.to_xcom())

    def make_trigger(self) -> InputPresenceTrigger:
        min_files, stable_for = self._limits(self.min_files, self.stable_for)
        return InputPresenceTrigger(
            validate_bucket(self.bucket),
            input_prefix(self.dataset),
            self.patterns,
            min_files,
            stable_for,
            self.minio_conn_id,
            float(self.poke_interval),
        )
