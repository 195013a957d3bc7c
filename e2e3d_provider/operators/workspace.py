"""WorkspaceOperator: the base for user code that turns a staged dataset into results, on any worker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import Context

from e2e3d_provider.core.layout import BUCKET_INPUT, BUCKET_OUTPUT, input_prefix
from e2e3d_provider.exceptions import InvalidInputError
from e2e3d_provider.lifecycle.worker.workspace import Produced, Workspace, run_in_workspace
from e2e3d_provider.operators.base import E2E3DOperator
from e2e3d_provider.operators.run_context import data_root


class WorkspaceOperator(E2E3DOperator):
    """Runs :meth:`produce` in a local workspace on whatever worker the task lands on: the staged dataset
    through this host's read-through cache, a run directory whose files are uploaded (write-back) to the
    run's hand-off area while ``produce`` still runs, and a temp directory. The task ends once every file
    is stored and verified and ``handoff.json`` is written; the XCom ``handoff`` says where (bucket,
    prefix, manifest key). Subclass it and implement ``produce``, or use ``@task.e2e3d_workspace``.

    :param staged: the stage-in task's XCom (``stage_in.output``; templated).
    :param data_root: local data root (default ``$E2E3D_DATA_ROOT``, Variable ``e2e3d_data_root``).
    :param settle_seconds: a file unchanged this long is uploaded while the producer runs.
    :param upload_concurrency: files uploaded at once by the write-back.
    """

    template_fields: Sequence[str] = ("staged", "data_root")
    ui_color = "#d5e8d4"
    sweeps_scratch = True

    def __init__(
        self,
        *,
        staged: Mapping[str, Any] | str | None = None,
        data_root: str | None = None,
        input_bucket: str = BUCKET_INPUT,
        output_bucket: str = BUCKET_OUTPUT,
        settle_seconds: float = 1.0,
        upload_concurrency: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.staged = staged
        self.data_root = data_root
        self.input_bucket = input_bucket
        self.output_bucket = output_bucket
        self.settle_seconds = settle_seconds
        self.upload_concurrency = upload_concurrency

    def produce(self, workspace: Workspace, context: Context) -> Any:
        """Write the results of ``workspace.input_dir`` below ``workspace.run_dir``; return a small,
        JSON-safe value (statistics) for XCom."""
        raise NotImplementedError(f"{type(self).__name__} must implement produce(workspace, context)")

    def staged_input(self) -> Mapping[str, Any]:
        if not isinstance(self.staged, Mapping):
            raise InvalidInputError(
                f"{self.task_id}: 'staged' must be the stage-in XCom (a mapping), got {self.staged!r}"
            )
        return self.staged

    def execute(self, context: Context) -> Any:
        # errors of the input itself (ReconstructionError, InvalidInputError, RightSizeInputError...) fail at
        # once, without a retry: E2E3DOperator's permanent errors
        produced = run_in_workspace(
            self.storage,
            data_root(self.data_root),
            self.staged_input(),
            lambda workspace: self.produce(workspace, context),
            input_bucket=self.input_bucket,
            output_bucket=self.output_bucket,
            settle=self.settle_seconds,
            concurrency=self.upload_concurrency,
        )
        self.report(produced, context)
        return produced.value

    def report(self, produced: Produced, context: Context) -> None:
        """Push the hand-off's location, record what moved, say it in the log."""
        ti = context["ti"]
        ti.xcom_push(key="handoff", value=produced.handoff.to_xcom())
        ws = produced.workspace
        self.report_lineage(
            [(self.input_bucket, input_prefix(ws.dataset))], [(produced.handoff.bucket, produced.handoff.prefix)]
        )
        self.record_transfer(context, produced.sent, suffix=":handoff", job_id=ws.job_id, stamp=ws.stamp)
        if produced.staged_input is not None and produced.staged_input.files:
            self.record_transfer(context, produced.staged_input, suffix=":input", job_id=ws.job_id, stamp=ws.stamp)
        stats = produced.write_back
        self.log.info(
            "handed %s on to %s/%s: %d files; %d (%d bytes) uploaded while the producer ran, %d (%d bytes) after",
            ws.job_id,
            produced.handoff.bucket,
            produced.handoff.prefix,
            produced.handoff.files,
            stats.early_files,
            stats.early_bytes,
            stats.flushed_files,
            stats.flushed_bytes,
        )
