"""MetadataRecordOperator: a job's status, result locations, statistics and file inventory in PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context

from e2e3d_provider.core.layout import BUCKET_OUTPUT
from e2e3d_provider.core.xcom import MetadataRecordXCom
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.lifecycle.results.record import record_job_run
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

    template_fields: Sequence[str] = ("job_id", "stamp", "dataset", "status", "upload", "statistics", "error", "bucket")
    ui_color = "#d8c5e8"

    def __init__(
        self,
        *,
        job_id: str,
        stamp: str,
        dataset: str,
        status: str,
        upload: dict[str, Any] | None = None,
        statistics: dict[str, Any] | None = None,
        error: str | None = None,
        bucket: str = BUCKET_OUTPUT,
        metadata_conn_id: str = MetadataHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(metadata_conn_id=metadata_conn_id, **kwargs)
        self.job_id = job_id
        self.stamp = stamp
        self.dataset = dataset
        self.status = status
        self.upload = upload
        self.statistics = statistics
        self.error = error
        self.bucket = bucket

    def execute(self, context: Context) -> MetadataRecordXCom:
        if self.metadata is None:
            raise ValueError("MetadataRecordOperator needs a metadata_conn_id")
        row = record_job_run(
            self.metadata,
            self.storage if self.status == "succeeded" else None,
            self.job_id,
            self.stamp,
            self.dataset,
            self.status,
            statistics=self.statistics,
            error=self.error,
            upload=self.upload,
            bucket=self.bucket,
            started_at=getattr(context.get("dag_run"), "start_date", None),  # a Clear's restart times a re-run
        )
        self.log.info("job %s run %s: %s", row["job_id"], row["stamp"], row["status"])
        return {"job_id": row["job_id"], "status": row["status"]}
