"""Reconcile job rows with the DAG runs that own them: a run ended from outside (marked failed in
the UI or through the REST API, or deleted) never reaches its ``mark_failed`` task, so its job would
stay ``running`` for ever."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from e2e3d_provider.hooks.metadata import MetadataHook

log = logging.getLogger(__name__)

#: DAG run states in which a job the run still calls ``running`` will never be finished by it
ENDED_STATES = frozenset({"failed", "success"})


def reconcile_running_jobs(
    metadata: MetadataHook, dag_run_state: Callable[[str, str], str | None], limit: int = 1000
) -> dict[str, Any]:
    """Mark ``failed`` every ``running`` job whose DAG run has ended (or is gone) without finishing it.

    ``dag_run_state(dag_id, run_id)`` answers the run's state, or ``None`` when there is no such run.
    Jobs without a recorded DAG run (written by other tools) are left alone.
    """
    failed, checked = [], 0
    for job in metadata.list_jobs("running", limit=limit):
        owner = job.get("statistics") or {}
        dag_id, run_id = owner.get("dag_id"), owner.get("dag_run_id")
        if not dag_id or not run_id:
            continue
        checked += 1
        state = dag_run_state(dag_id, run_id)
        if state is not None and state not in ENDED_STATES:
            continue  # queued or running: its own tasks will finish the job
        how = "no longer exists" if state is None else f"ended {state}"
        error = (
            f"DAG run {run_id} of {dag_id} {how} without finishing the job (marked {state or 'deleted'} from "
            "the UI or the REST API?); reconciled by maintenance"
        )
        metadata.record_job(job["job_id"], job["stamp"], job["dataset"], "failed", error=error)
        log.warning("job %s run %s: %s", job["job_id"], job["stamp"], error)
        failed.append(job["job_id"])
    return {"checked": checked, "failed": len(failed), "jobs": failed[:20]}
