"""Locks that keep two runs of one job from interleaving, on whatever host their tasks run: a
PostgreSQL advisory lock per job id, held while a run is started, published or archived."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from e2e3d_provider.core.layout import validate_id
from e2e3d_provider.hooks.metadata import MetadataHook

#: seconds a publish or archive waits for another run of the job to finish its own, by default
DEFAULT_LOCK_WAIT = 600.0


def job_lock_name(job_id: str) -> str:
    """The advisory lock of a job's output prefix."""
    return f"job {validate_id(job_id, 'job_id')} (its output prefix)"


@contextmanager
def job_lock(metadata: MetadataHook | None, job_id: str, wait: float = DEFAULT_LOCK_WAIT) -> Iterator[Any]:
    """Hold the job's lock for the block (waiting up to ``wait`` seconds, then RunConflictError); yields the
    lock's connection (None without a lock). Without a metadata connection there is nothing to lock with:
    the block runs unguarded."""
    if metadata is None:
        yield None
        return
    with metadata.advisory_lock(job_lock_name(job_id), wait=wait) as conn:
        yield conn
