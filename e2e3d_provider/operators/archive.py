"""ArchiveOperator: a completed job from ``output`` into ``archive``, verified, optionally moved."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context

from e2e3d_provider.core.layout import BUCKET_ARCHIVE, BUCKET_OUTPUT, output_prefix
from e2e3d_provider.core.xcom import ArchiveXCom
from e2e3d_provider.lifecycle.durability.archive import archive_and_record
from e2e3d_provider.operators.base import E2E3DOperator
from e2e3d_provider.operators.run_context import as_bool


class ArchiveOperator(E2E3DOperator):
    """Copies a completed job (SUCCESS and manifest verified) into the archive bucket with
    server-side copies (no bytes pass through the worker), verifies every archived object's size
    and sha256 against the manifest, records the archive location and status ``archived`` in
    PostgreSQL (when ``metadata_conn_id`` is set), and optionally removes the job from ``output``.

    Returns ``{"job_id", "archive_key", "archive_bucket", "stamp", "files", "bytes"}``.

    :param job_id: job id (templated).
    :param stamp: the run to archive (templated; usually ``stage_in``'s). By default, with a metadata
        connection, the job's latest run in PostgreSQL. A published set that names another run (a stale copy,
        or one a writer with the worker's keys put there) is refused, never archived over that run's copy.
    :param remove_source: delete the job from the source bucket once archived (templated).
    """

    storage_role = "maintenance"  # copies output to archive, and may remove the source
    template_fields: Sequence[str] = ("job_id", "stamp", "source_bucket", "archive_bucket", "remove_source")
    ui_color = "#d0d0d0"

    def __init__(
        self,
        *,
        job_id: str,
        stamp: str | None = None,
        source_bucket: str = BUCKET_OUTPUT,
        archive_bucket: str = BUCKET_ARCHIVE,
        remove_source: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_id = job_id
        self.stamp = stamp
        self.source_bucket = source_bucket
        self.archive_bucket = archive_bucket
        self.remove_source = remove_source

    def execute(self, context: Context) -> ArchiveXCom:
        result = archive_and_record(
            self.storage,
            self.metadata,
            self.job_id,
            stamp=self.stamp or None,
            source_bucket=self.source_bucket,
            archive_bucket=self.archive_bucket,
            remove_source=as_bool(self.remove_source),
        )
        self.report_lineage(
            [(self.source_bucket, output_prefix(result.job_id))], [(self.archive_bucket, result.archive_key)]
        )
        self.log.info(
            "archived %s (%d files, %d bytes) to %s%s",
            result.job_id,
            result.files,
            result.bytes,
            result.location,
            "; removed from source" if result.removed_source else "",
        )
        return result.to_xcom()


def __getattr__(name: str) -> object:
    """``archive_job`` and ``ArchiveResult`` moved to the lifecycle layer; the old names still work."""
    if name in ("archive_job", "ArchiveResult"):
        import warnings

        from e2e3d_provider.lifecycle.durability import archive

        warnings.warn(f"{__name__}.{name} moved to {archive.__name__}", DeprecationWarning, stacklevel=2)
        return getattr(archive, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
