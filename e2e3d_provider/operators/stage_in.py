"""StageInOperator: a dataset (and optional models) from object storage to the local data root."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from e2e3d_provider.layout import (
    BUCKET_INPUT,
    BUCKET_MODELS,
    RUN_SUBDIRS,
    RunLayout,
    input_dir,
    input_prefix,
    models_dir,
    resolve_data_root,
    validate_id,
)
from e2e3d_provider.operators.base import E2E3DOperator
from e2e3d_provider.operators.run_context import run_stamp


class StageInOperator(E2E3DOperator):
    """Copies ``input/<dataset>/`` (and optionally ``models/<models_prefix>/``) to the local data
    root, in parallel, checksum-verified and cached: files already present with the same sha256
    are not transferred again, and files gone from the bucket are removed locally. Creates the
    run's output directory (with ``mesh/ textures/ pointcloud/ logs/ temp/``) and temp directory.

    Returns ``{"dataset", "job_id", "stamp", "host", "input_dir", "temp_dir", "output_dir",
    "files", "bytes", "transferred_bytes", "seconds"}`` (plus ``models_dir`` with models).

    :param dataset: dataset id (templated).
    :param job_id: job id (templated).
    :param stamp: run stamp; default derived from the DAG run, identical across retries (templated).
    :param models_prefix: prefix in the models bucket to stage as well (templated).
    :param data_root: local data root; default ``$E2E3D_DATA_ROOT``, Variable ``e2e3d_data_root``,
        ``/app/data`` (templated).
    :param metadata_conn_id: when set, the transfer is recorded in PostgreSQL.
    """

    template_fields: Sequence[str] = ("dataset", "job_id", "stamp", "models_prefix", "data_root", "input_bucket",
                                      "models_bucket")
    ui_color = "#e8dcc5"

    def __init__(self, *, dataset: str, job_id: str, stamp: str | None = None, models_prefix: str | None = None,
                 data_root: str | None = None, input_bucket: str = BUCKET_INPUT, models_bucket: str = BUCKET_MODELS,
                 metadata_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(metadata_conn_id=metadata_conn_id, **kwargs)
        self.dataset = dataset
        self.job_id = job_id
        self.stamp = stamp
        self.models_prefix = models_prefix
        self.data_root = data_root
        self.input_bucket = input_bucket
        self.models_bucket = models_bucket

    def execute(self, context: Any) -> dict[str, Any]:
        dataset, job_id = validate_id(self.dataset, "dataset"), validate_id(self.job_id, "job_id")
        stamp = run_stamp(context, self.stamp)
        root = resolve_data_root(self.data_root)
        run = RunLayout(root, job_id, stamp)

        if not self.storage.list_keys(self.input_bucket, input_prefix(dataset)):
            raise FileNotFoundError(f"dataset {dataset!r} has no objects in bucket {self.input_bucket!r} (expected "
                                    f"keys below {input_prefix(dataset)}); upload it first (e2e3d ingest)")
        local_input = input_dir(root, dataset)
        staged = self.storage.download_prefix(self.input_bucket, input_prefix(dataset), local_input,
                                              delete_extraneous=True)
        result = {"dataset": dataset, "job_id": job_id, "stamp": stamp, "host": socket.gethostname(),
                  "input_dir": str(local_input), "temp_dir": str(run.temp_dir), "output_dir": str(run.run_dir),
                  "files": staged.total_files, "bytes": staged.bytes + staged.skipped_bytes,
                  "transferred_bytes": staged.bytes, "seconds": round(staged.seconds, 3)}
        transfers = [staged]
        if self.models_prefix:
            local_models = models_dir(root, self.models_prefix)
            models = self.storage.download_prefix(self.models_bucket, self.models_prefix, local_models,
                                                  delete_extraneous=True)
            transfers.append(models)
            result["models_dir"] = str(local_models)

        for sub in RUN_SUBDIRS:
            (run.run_dir / sub).mkdir(parents=True, exist_ok=True)
        run.temp_dir.mkdir(parents=True, exist_ok=True)
        for transfer in transfers:
            self.record_transfer(context, "download", suffix=f"/{transfer.bucket}", bucket=transfer.bucket,
                                 prefix=transfer.prefix, files=transfer.files, bytes=transfer.bytes,
                                 skipped_files=transfer.skipped_files, seconds=transfer.seconds, job_id=job_id,
                                 stamp=stamp)
        self.log.info("staged %s: %d files (%d bytes transferred) into %s; run dir %s", dataset, result["files"],
                      staged.bytes, local_input, run.run_dir)
        return result
