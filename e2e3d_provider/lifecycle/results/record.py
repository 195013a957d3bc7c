"""Record a job run in PostgreSQL: its status, and for a published run its locations, statistics and
file inventory, read from the manifest its SUCCESS marker names."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from e2e3d_provider.core.layout import (
    BUCKET_OUTPUT,
    manifest_key,
    output_key,
    output_prefix,
    validate_id,
    validate_stamp,
)
from e2e3d_provider.exceptions import RunConflictError, RunFinishedError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.metadata_schema import STATUSES
from e2e3d_provider.hooks.storage import StorageHook, TransferResult
from e2e3d_provider.lifecycle.locks import job_lock
from e2e3d_provider.lifecycle.results.published import read_published_manifest

#: seconds a starting run waits for another run's publish or start to release the job
BEGIN_LOCK_WAIT = 60.0


def begin_run(
    metadata: MetadataHook,
    job_id: str,
    stamp: str,
    dataset: str,
    dag_run_id: str,
    dag_id: str | None = None,
    run_is_live: Callable[[str, str], bool] | None = None,
) -> dict[str, Any]:
    """Under the job's lock (so two DAG runs starting at once cannot both pass the checks), record a run
    ``running`` for the DAG run ``dag_run_id`` (of ``dag_id``); returns its row.

    Two DAG runs never share one run of a job (its run dir, temp dir and output prefix): a run whose
    ``(job_id, stamp)`` another DAG run holds raises :class:`RunConflictError`. A run that already
    ``succeeded`` or was ``archived`` is not redone: started again by its own DAG run (what an Airflow
    Clear of a finished run does), :class:`RunFinishedError` says so; by another DAG run (one queued
    in the same second), :class:`RunConflictError`. The same DAG run starting again after a failure
    (a Clear of a failed run, a retry) simply continues. The DAG run is kept in the job's statistics,
    so a run ended from outside (marked failed in the UI) can be reconciled.

    Nor do two runs of one job interleave at different stamps (they share its output prefix): another
    run still ``running`` under a DAG run that ``run_is_live(dag_id, run_id)`` says is alive (every
    other DAG run, without that answer) raises :class:`RunConflictError`.
    """
    with job_lock(metadata, job_id, wait=BEGIN_LOCK_WAIT):
        return _begin_run(metadata, job_id, stamp, dataset, dag_run_id, dag_id, run_is_live)


def _begin_run(
    metadata: MetadataHook,
    job_id: str,
    stamp: str,
    dataset: str,
    dag_run_id: str,
    dag_id: str | None,
    run_is_live: Callable[[str, str], bool] | None,
) -> dict[str, Any]:
    for other in metadata.job_runs(job_id, "running"):
        owner = other.get("statistics") or {}
        other_run, other_dag = owner.get("dag_run_id"), owner.get("dag_id")
        if other["stamp"] == stamp or not other_run or other_run == dag_run_id:
            continue
        if run_is_live is None or not other_dag or run_is_live(other_dag, other_run):
            raise RunConflictError(
                f"job {job_id} has a run in progress (stamp {other['stamp']}, DAG run {other_run!r}); two runs of "
                "one job never interleave, since they publish to one output prefix. Wait for it, or mark it "
                "failed."
            )
    existing = metadata.get_job(job_id, stamp)
    if existing is not None:
        owner = (existing.get("statistics") or {}).get("dag_run_id")
        if existing["status"] in ("succeeded", "archived") and owner and owner != dag_run_id:
            raise RunConflictError(
                f"job {job_id} run {stamp} was already completed by DAG run {owner!r}; trigger with another "
                "job_id (or later) to reconstruct it again."
            )
        if existing["status"] in ("succeeded", "archived"):
            raise RunFinishedError(
                f"job {job_id} run {stamp} is already {existing['status']}; it is not redone. Trigger a new "
                "run of the DAG to reconstruct the job again."
            )
        if owner and owner != dag_run_id and existing["status"] == "running":
            raise RunConflictError(
                f"job {job_id} run {stamp} is running in DAG run {owner!r}; two runs of one job never share a "
                "run directory. Wait for it, or trigger with another job_id."
            )
    owner_ids = {"dag_run_id": dag_run_id, **({"dag_id": dag_id} if dag_id else {})}
    return metadata.record_job(job_id, stamp, dataset, "running", statistics=owner_ids)


def record_transfer(metadata: MetadataHook, transfer: TransferResult, transfer_key: str | None, **fields: Any) -> None:
    """Record what a transfer moved (PostgreSQL's I/O statistics); ``transfer_key`` (dag/run/task...) makes
    a retry update its row instead of adding one."""
    metadata.record_transfer(
        transfer.direction,
        transfer_key=transfer_key,
        bucket=transfer.bucket,
        prefix=transfer.prefix,
        files=transfer.files,
        bytes=transfer.bytes,
        skipped_files=transfer.skipped_files,
        skipped_bytes=transfer.skipped_bytes,
        seconds=transfer.seconds,
        **fields,
    )


def upload_statistics(upload: dict[str, Any] | None) -> dict[str, Any]:
    """Throughput figures from ``upload_results``' XCom dict (empty when it has none)."""
    if not isinstance(upload, dict) or not upload.get("seconds"):
        return {}
    sent = upload.get("uploaded_bytes", 0)
    return {
        "upload_seconds": upload["seconds"],
        "upload_bytes": sent,
        "upload_mb_per_s": round(sent / 1e6 / upload["seconds"], 2),
    }


def record_job_run(
    metadata: MetadataHook,
    storage: StorageHook | None,
    job_id: str,
    stamp: str,
    dataset: str,
    status: str,
    *,
    statistics: dict[str, Any] | None = None,
    error: str | None = None,
    bucket: str = BUCKET_OUTPUT,
    started_at: datetime | None = None,
    upload: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Move a run to ``status``; returns its row. ``upload`` (``upload_results``' XCom value) adds its
    throughput to the statistics (:func:`upload_statistics`).

    ``succeeded`` is recorded only over a published run: the manifest that ``<job_id>/SUCCESS`` names
    (so ``storage`` is needed) must be for this very run. Its totals, statistics and per-file inventory
    are stored, the inventory in bulk. Every write is an upsert keyed by job id and stamp, so retries
    never duplicate rows; a run recorded ``queued`` or ``failed`` passes through ``running`` first,
    started at ``started_at`` (its DAG run's start: a failed run that a Clear re-ran, when no listener
    moved it back to ``running``, is timed from the restart, not from the instant it is recorded).
    """
    job_id, stamp, dataset = validate_id(job_id, "job_id"), validate_stamp(stamp), validate_id(dataset, "dataset")
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    statistics = {**(statistics or {}), **upload_statistics(upload)}
    if status != "succeeded":
        return metadata.record_job(
            job_id, stamp, dataset, status, error=error, statistics=statistics, started_at=started_at
        )
    if storage is None:
        raise ValueError("recording a succeeded run needs object storage, to read its published manifest")

    manifest = read_published_manifest(storage, bucket, job_id)
    if manifest.stamp != stamp:
        raise ValueError(f"the published manifest of {job_id} is for run {manifest.stamp}, not {stamp}")
    existing = metadata.get_job(job_id, stamp)
    if existing is None or existing["status"] in ("queued", "failed"):
        metadata.record_job(job_id, stamp, dataset, "running", started_at=started_at)
    metadata.record_files(
        job_id,
        stamp,
        [
            (e.kind, output_key(job_id, e.path), e.size, e.sha256, e.role, e.source, e.level, e.figures)
            for e in manifest.files
        ],
    )
    return metadata.record_job(
        job_id,
        stamp,
        dataset,
        "succeeded",
        statistics={**manifest.statistics, **statistics},
        result_bucket=bucket,
        result_prefix=output_prefix(job_id),
        manifest_key=manifest_key(job_id),
        files=len(manifest.files),
        bytes=manifest.total_bytes,
    )
