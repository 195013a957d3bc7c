"""MetadataRecordOperator: a job's status, result locations, statistics and file inventory in PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from e2e3d_provider.commit import read_published_manifest
from e2e3d_provider.hooks.metadata import STATUSES, MetadataHook
from e2e3d_provider.layout import (
    BUCKET_OUTPUT,
    manifest_key,
    output_key,
    output_prefix,
    validate_id,
    validate_stamp,
)
from e2e3d_provider.operators.base import E2E3DOperator


class MetadataRecordOperator(E2E3DOperator):
    """Records a job run's status (``running``, ``succeeded``, ``failed``, ``archived``) in PostgreSQL.

    For ``succeeded`` it reads the published manifest (SUCCESS must exist) and stores the result
    locations, totals, statistics (including transfer throughput from ``upload``'s XCom) and the
    per-file inventory, in bulk. Every write is an upsert keyed by job id and stamp, so retries
    never duplicate rows.

    Returns ``{"job_id", "status"}``.

    :param job_id: job id (templated).
    :param stamp: run stamp (templated).
    :param dataset: dataset id (templated).
    :param status: the status to record (templated).
    :param upload: ``upload_results``'s XCom dict (templated); its timings go into the statistics.
    :param statistics: extra statistics to merge (templated).
    :param error: error text for ``failed`` (templated).
    """

    template_fields: Sequence[str] = ("job_id", "stamp", "dataset", "status", "upload", "statistics", "error",
                                      "bucket")
    ui_color = "#d8c5e8"

    def __init__(self, *, job_id: str, stamp: str, dataset: str, status: str, upload: dict[str, Any] | None = None,
                 statistics: dict[str, Any] | None = None, error: str | None = None, bucket: str = BUCKET_OUTPUT,
                 metadata_conn_id: str = MetadataHook.default_conn_name, **kwargs: Any) -> None:
        super().__init__(metadata_conn_id=metadata_conn_id, **kwargs)
        self.job_id = job_id
        self.stamp = stamp
        self.dataset = dataset
        self.status = status
        self.upload = upload
        self.statistics = statistics
        self.error = error
        self.bucket = bucket

    def execute(self, context: Any) -> dict[str, str]:
        job_id, stamp = validate_id(self.job_id, "job_id"), validate_stamp(self.stamp)
        dataset = validate_id(self.dataset, "dataset")
        metadata = self.metadata
        if metadata is None:
            raise ValueError("MetadataRecordOperator needs a metadata_conn_id")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {self.status!r}")
        statistics = dict(self.statistics or {})
        upload = self.upload if isinstance(self.upload, dict) else {}
        if upload.get("seconds"):
            statistics["upload_seconds"] = upload["seconds"]
            statistics["upload_bytes"] = upload.get("uploaded_bytes", 0)
            statistics["upload_mb_per_s"] = round(upload.get("uploaded_bytes", 0) / 1e6 / upload["seconds"], 2)
        if self.status != "succeeded":
            row = metadata.record_job(job_id, stamp, dataset, self.status, error=self.error,
                                           statistics=statistics)
            return {"job_id": job_id, "status": row["status"]}

        manifest = read_published_manifest(self.storage, self.bucket, job_id)
        if manifest.stamp != stamp:
            raise ValueError(f"the published manifest of {job_id} is for run {manifest.stamp}, not {stamp}")
        statistics = {**manifest.statistics, **statistics}
        existing = metadata.get_job(job_id, stamp)
        if existing is None or existing["status"] in ("queued", "failed"):
            metadata.record_job(job_id, stamp, dataset, "running")
        metadata.record_files(job_id, stamp, [(e.kind, output_key(job_id, e.path), e.size, e.sha256)
                                                   for e in manifest.files])
        row = metadata.record_job(job_id, stamp, dataset, "succeeded", statistics=statistics,
                                       result_bucket=self.bucket, result_prefix=output_prefix(job_id),
                                       manifest_key=manifest_key(job_id),
                                       files=len(manifest.files), bytes=manifest.total_bytes)
        self.log.info("job %s run %s: %s, %d files recorded", job_id, stamp, row["status"], len(manifest.files))
        return {"job_id": job_id, "status": row["status"]}
