"""Reconcile job rows with the DAG runs that own them: a run ended from outside (marked failed in
the UI or through the REST API, or deleted) never reaches its ``mark_failed`` task, so its job would
stay ``running`` for ever; a failed run that a Clear starts again runs its tasks again while its job
would still say ``failed``.

:func:`follow_dag_run` applies one DAG run's state change as Airflow makes it (the provider's
listener calls it); :func:`reconcile_running_jobs` is the daily backstop that catches what no
listener saw (a component down, PostgreSQL unreachable at that moment, a deleted run)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
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


def follow_dag_run(
    metadata: MetadataHook, dag_id: str, run_id: str, state: str, *, at: datetime | None = None, note: str = ""
) -> list[str]:
    """Bring the jobs that the DAG run ``run_id`` of ``dag_id`` owns in line with ``state``, the state Airflow
    has just given the run (at ``at``: its start for ``running``, its end otherwise); returns the job ids
    changed.

    - ``running`` (a Clear started a finished run again): a ``failed`` job runs again, timed from the
      run's new start, so its duration is the re-run's and the job says ``running`` while it re-runs.
    - ``failed`` or ``success`` (marked from the UI or the REST API, or ended by its tasks): a job still
      ``running`` never will be finished by the run, so it becomes ``failed``, naming the run and
      Airflow's reason (``note``). A run that ended normally has finished its job already: nothing to do.

    Each change is checked against ``at``, so an event that arrives late never undoes a newer one: a job
    that failed after the restart (the re-run failed) is not restarted, a job started after the run ended
    (a later Clear) is not failed. Jobs of other DAG runs are never touched.
    """
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=UTC)  # Airflow's times are UTC
    changed = []
    if state == "running":
        for job in metadata.dag_run_jobs(dag_id, run_id, ("failed",)):
            if at is not None and job["finished_at"] is not None and job["finished_at"] > at:
                continue  # it failed in this very run, after it started: not a restart
            metadata.record_job(job["job_id"], job["stamp"], job["dataset"], "running", started_at=at)
            log.info("job %s run %s: running again, its DAG run %s restarted", job["job_id"], job["stamp"], run_id)
            changed.append(job["job_id"])
    elif state in ENDED_STATES:
        for job in metadata.dag_run_jobs(dag_id, run_id, ("running",)):
            if at is not None and job["started_at"] is not None and job["started_at"] > at:
                continue  # started again after this end: a later Clear's run owns it now
            reason = f": {note.strip()}" if note.strip() else ""
            error = f"DAG run {run_id} of {dag_id} ended {state} without finishing the job{reason}"
            metadata.record_job(job["job_id"], job["stamp"], job["dataset"], "failed", error=error)
            log.warning("job %s run %s: %s", job["job_id"], job["stamp"], error)
            changed.append(job["job_id"])
    return changed
