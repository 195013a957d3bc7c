"""ArchiveOperator: a completed job from ``output`` into ``archive``, verified, optionally moved."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from e2e3d_provider.commit import read_published_manifest, verify_remote
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.layout import (
    BUCKET_ARCHIVE,
    BUCKET_OUTPUT,
    MANIFEST_NAME,
    SUCCESS_NAME,
    archive_prefix,
    output_prefix,
    success_key,
    validate_id,
)
from e2e3d_provider.operators.base import E2E3DOperator
from e2e3d_provider.operators.run_context import as_bool
from e2e3d_provider.transfer import run_parallel


@dataclass
class ArchiveResult:
    job_id: str
    stamp: str
    archive_bucket: str
    archive_key: str
    files: int
    bytes: int
    removed_source: bool


def archive_job(storage: StorageHook, job_id: str, *, source_bucket: str = BUCKET_OUTPUT,
                archive_bucket: str = BUCKET_ARCHIVE, remove_source: bool = False) -> ArchiveResult:
    """Server-side copy a completed job to ``archive/<job_id>/<job_id>_<stamp>/`` and verify it.

    The job must have SUCCESS and a manifest that its stored objects match. The archive copy gets
    its own SUCCESS last. With ``remove_source`` the job's SUCCESS in ``source_bucket`` goes first,
    then the rest, so no reader ever sees a marker over a partial set.
    """
    validate_id(job_id, "job_id")
    manifest = read_published_manifest(storage, source_bucket, job_id)
    source, target = output_prefix(job_id), archive_prefix(job_id, manifest.stamp)
    verify_remote(storage, source_bucket, source, manifest)  # never archive what does not match

    def copy(relpath: str) -> None:
        storage.copy_object(source_bucket, source + relpath, archive_bucket, target + relpath)

    run_parallel([e.path for e in manifest.files], copy, storage.max_workers, lambda rel: rel, storage.translate)
    verify_remote(storage, archive_bucket, target, manifest)
    copy(MANIFEST_NAME)
    copy(SUCCESS_NAME)
    if remove_source:
        storage.delete_object(source_bucket, success_key(job_id))
        storage.delete_prefix(source_bucket, source)
    return ArchiveResult(job_id, manifest.stamp, archive_bucket, target, len(manifest.files), manifest.total_bytes,
                         remove_source)


class ArchiveOperator(E2E3DOperator):
    """Copies a completed job (SUCCESS and manifest verified) into the archive bucket with
    server-side copies (no bytes pass through the worker), verifies every archived object's size
    and sha256 against the manifest, records the archive location and status ``archived`` in
    PostgreSQL (when ``metadata_conn_id`` is set), and optionally removes the job from ``output``.

    Returns ``{"job_id", "archive_key", "archive_bucket", "stamp", "files", "bytes"}``.

    :param job_id: job id (templated).
    :param remove_source: delete the job from the source bucket once archived (templated).
    """

    template_fields: Sequence[str] = ("job_id", "source_bucket", "archive_bucket", "remove_source")
    ui_color = "#d0d0d0"

    def __init__(self, *, job_id: str, source_bucket: str = BUCKET_OUTPUT, archive_bucket: str = BUCKET_ARCHIVE,
                 remove_source: bool | str = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job_id = job_id
        self.source_bucket = source_bucket
        self.archive_bucket = archive_bucket
        self.remove_source = remove_source

    def execute(self, context: Any) -> dict[str, Any]:
        result = archive_job(self.storage, self.job_id, source_bucket=self.source_bucket,
                             archive_bucket=self.archive_bucket, remove_source=as_bool(self.remove_source))
        if self.metadata is not None:
            job = self.metadata.get_job(result.job_id, result.stamp)
            if job is not None:
                self.metadata.record_job(result.job_id, result.stamp, job["dataset"], "archived",
                                archive_key=f"{result.archive_bucket}/{result.archive_key}")
            else:
                self.log.warning("job %s run %s is not in the metadata database; archive not recorded there",
                                 result.job_id, result.stamp)
        self.log.info("archived %s (%d files, %d bytes) to %s/%s%s", result.job_id, result.files, result.bytes,
                      result.archive_bucket, result.archive_key,
                      "; removed from source" if result.removed_source else "")
        return {"job_id": result.job_id, "archive_key": result.archive_key, "archive_bucket": result.archive_bucket,
                "stamp": result.stamp, "files": result.files, "bytes": result.bytes}
