"""UploadResultsOperator: a run directory to the output bucket under the commit protocol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Asset, Context

from e2e3d_provider.core.layout import BUCKET_OUTPUT, output_prefix, validate_id, validate_stamp, work_prefix
from e2e3d_provider.core.xcom import PublishXCom
from e2e3d_provider.lifecycle.results.publish import DEFAULT_LOCK_WAIT, publish_job
from e2e3d_provider.operators.base import E2E3DOperator

RESULTS_ASSET_NAME = "e2e3d_results"


def results_asset(bucket: str = BUCKET_OUTPUT) -> Asset:
    """The Asset every completed job updates; the event's extra names the job, stamp and manifest."""
    return Asset(
        name=RESULTS_ASSET_NAME if bucket == BUCKET_OUTPUT else f"{RESULTS_ASSET_NAME}_{bucket}", uri=f"s3://{bucket}/"
    )


class UploadResultsOperator(E2E3DOperator):
    """Publishes a run to ``output/<job_id>/`` so that SUCCESS means complete and verified. A run that
    earlier tasks handed off to object storage (``output/.work/...``) is published from there by
    server-side copies, on whatever host this task runs, and the hand-off is removed; otherwise the
    local run directory is published:
    removes an old SUCCESS first, uploads every file with its sha256 (identical objects are skipped),
    verifies each stored object against the manifest, uploads ``metadata.json``, writes SUCCESS last
    (locally and in the bucket). Emits an event on the results Asset (``s3://output/``) carrying
    ``job_id``, ``stamp`` and ``manifest_key``, so downstream DAGs can be scheduled on results.

    Returns ``{"job_id", "stamp", "bucket", "prefix", "files", "bytes", "manifest_key",
    "success_key", "uploaded_files", "uploaded_bytes", "seconds"}``.

    :param job_id: job id (templated).
    :param stamp: run stamp (templated; usually ``stage_in``'s).
    :param run_dir: local run directory (templated; usually ``stage_in``'s ``output_dir``).
    :param origin_host: host that wrote ``run_dir`` (templated; ``stage_in``'s ``host``), named in
        the error when the directory is not on this host.
    :param statistics: extra statistics stored in the manifest (templated).
    :param metadata_conn_id: when set, the transfer is recorded in PostgreSQL, and the publish holds the
        job's advisory lock there: two runs of one job never publish at once, on any hosts.
    :param lock_wait: seconds to wait for another run's publish or archive of the job before failing with
        ``RunConflictError`` (default 600).
    """

    template_fields: Sequence[str] = ("job_id", "stamp", "run_dir", "origin_host", "bucket", "statistics")
    ui_color = "#c5e8d8"
    sweeps_scratch = True

    def __init__(
        self,
        *,
        job_id: str,
        stamp: str,
        run_dir: str,
        origin_host: str | None = None,
        bucket: str = BUCKET_OUTPUT,
        statistics: dict[str, Any] | None = None,
        metadata_conn_id: str | None = None,
        lock_wait: float = DEFAULT_LOCK_WAIT,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("outlets", [results_asset(bucket)])
        super().__init__(metadata_conn_id=metadata_conn_id, **kwargs)
        self.job_id = job_id
        self.stamp = stamp
        self.run_dir = run_dir
        self.origin_host = origin_host
        self.bucket = bucket
        self.statistics = statistics
        self.lock_wait = lock_wait

    def execute(self, context: Context) -> PublishXCom:
        job_id, stamp = validate_id(self.job_id, "job_id"), validate_stamp(self.stamp)
        published = publish_job(
            self.storage,
            self.metadata,
            job_id,
            stamp,
            run_dir=self.run_dir,
            origin_host=self.origin_host,
            bucket=self.bucket,
            statistics=dict(self.statistics or {}),
            lock_wait=self.lock_wait,
        )
        if published.transfer is not None:
            self.record_transfer(context, published.transfer, job_id=job_id, stamp=stamp)
        handed = [(BUCKET_OUTPUT, work_prefix(job_id, stamp))] if published.handed_off else []
        self.report_lineage(handed, [(self.bucket, output_prefix(job_id))])
        self.log.info(
            "published %s: %d files, %d bytes (%d sent); SUCCESS at %s/%s",
            job_id,
            published.files,
            published.bytes,
            published.uploaded_bytes,
            self.bucket,
            published.success_key,
        )
        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra = {
                    "job_id": job_id,
                    "stamp": stamp,
                    "bucket": self.bucket,
                    "manifest_key": published.manifest_key,
                }
        return published.to_xcom()
