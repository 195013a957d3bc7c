"""SuccessMarkerSensor: waits until a job's results are complete and verified (its SUCCESS marker)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context, PokeReturnValue

from e2e3d_provider.core.layout import BUCKET_OUTPUT, manifest_key, success_key, validate_bucket, validate_relpath
from e2e3d_provider.lifecycle.inputs.readiness import marker_present
from e2e3d_provider.sensors.base import StorageSensor
from e2e3d_provider.triggers.object_storage import SuccessMarkerTrigger


class SuccessMarkerSensor(StorageSensor):
    """Waits for ``<job_id>/SUCCESS`` (or ``key``) in ``bucket`` (default ``output``).

    Under the commit protocol the marker is written last, so once it exists the job's files and
    manifest are complete and verified. Returns ``{"bucket", "marker_key", "manifest_key"}``.

    :param job_id: the job whose marker to wait for (templated).
    :param key: an explicit marker key instead of ``<job_id>/SUCCESS`` (templated).
    :param bucket: bucket to watch (templated).
    """

    template_fields: Sequence[str] = ("job_id", "key", "bucket")
    ui_color = "#c5e8c5"

    def __init__(
        self, *, job_id: str | None = None, key: str | None = None, bucket: str = BUCKET_OUTPUT, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if not job_id and not key:
            raise ValueError("SuccessMarkerSensor needs job_id or key")
        self.job_id = job_id
        self.key = key
        self.bucket = bucket

    def _keys(self) -> tuple[str, str | None]:
        validate_bucket(self.bucket)
        if self.key:
            return validate_relpath(self.key), (manifest_key(self.job_id) if self.job_id else None)
        assert self.job_id is not None
        return success_key(self.job_id), manifest_key(self.job_id)

    def poke(self, context: Context) -> PokeReturnValue:
        marker, manifest = self._keys()
        found = marker_present(self.hook, self.bucket, marker)
        if not found:
            self.log.info("no %s/%s yet", self.bucket, marker)
        return PokeReturnValue(found, {"bucket": self.bucket, "marker_key": marker, "manifest_key": manifest})

    def make_trigger(self) -> SuccessMarkerTrigger:
        marker, manifest = self._keys()
        return SuccessMarkerTrigger(self.bucket, marker, manifest, self.minio_conn_id, float(self.poke_interval))
