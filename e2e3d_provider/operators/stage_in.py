"""StageInOperator: a dataset (and optional models) from object storage to the local data root."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context

from e2e3d_provider.core.layout import BUCKET_INPUT, BUCKET_MODELS
from e2e3d_provider.core.xcom import StageInXCom
from e2e3d_provider.lifecycle.worker.stage_in import stage_in
from e2e3d_provider.operators.base import E2E3DOperator
from e2e3d_provider.operators.run_context import data_root, run_stamp


class StageInOperator(E2E3DOperator):
    """Copies ``input/<dataset>/`` (and optionally ``models/<models_prefix>/``) to the local data
    root, in parallel, checksum-verified and cached: files already present with the same sha256
    are not transferred again, and files gone from the bucket are removed locally. Creates the
    run's output directory (with ``mesh/ textures/ pointcloud/ logs/ temp/``) and temp directory.

    Returns ``{"dataset", "job_id", "stamp", "host", "input_dir", "temp_dir", "output_dir",
    "files", "bytes", "transferred_bytes", "seconds"}`` (plus ``models_dir`` with models), pushed
    also key by key (``multiple_outputs``), so ``stage_in.output["output_dir"]`` is a native value.

    :param dataset: dataset id (templated).
    :param job_id: job id (templated).
    :param stamp: run stamp; default derived from the DAG run, identical across retries (templated).
    :param models_prefix: prefix in the models bucket to stage as well (templated).
    :param data_root: local data root; default ``$E2E3D_DATA_ROOT``, Variable ``e2e3d_data_root``,
        ``/app/data`` (templated).
    :param metadata_conn_id: when set, the transfer is recorded in PostgreSQL.
    """

    template_fields: Sequence[str] = (
        "dataset",
        "job_id",
        "stamp",
        "models_prefix",
        "data_root",
        "input_bucket",
        "models_bucket",
    )
    ui_color = "#e8dcc5"
    sweeps_scratch = True

    def __init__(
        self,
        *,
        dataset: str,
        job_id: str,
        stamp: str | None = None,
        models_prefix: str | None = None,
        data_root: str | None = None,
        input_bucket: str = BUCKET_INPUT,
        models_bucket: str = BUCKET_MODELS,
        metadata_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(metadata_conn_id=metadata_conn_id, **kwargs)
        self.dataset = dataset
        self.job_id = job_id
        self.stamp = stamp
        self.models_prefix = models_prefix
        self.data_root = data_root
        self.input_bucket = input_bucket
        self.models_bucket = models_bucket

    def execute(self, context: Context) -> StageInXCom:
        staged = stage_in(
            self.storage,
            data_root(self.data_root),
            self.dataset,
            self.job_id,
            run_stamp(context, self.stamp),
            models_prefix=self.models_prefix,
            input_bucket=self.input_bucket,
            models_bucket=self.models_bucket,
        )
        for transfer in staged.transfers:
            self.record_transfer(
                context, transfer, suffix=f"/{transfer.bucket}", job_id=staged.job_id, stamp=staged.stamp
            )
        xcom = staged.to_xcom()
        inputs = [(staged.source["bucket"], staged.source["prefix"])]
        if staged.models:
            inputs.append((staged.models["bucket"], staged.models["prefix"]))
        self.report_lineage(inputs, [])
        self.log.info(
            "staged %s: %d files (%d bytes transferred) into %s; run dir %s",
            staged.dataset,
            xcom["files"],
            xcom["transferred_bytes"],
            staged.input_dir,
            staged.output_dir,
        )
        return xcom
