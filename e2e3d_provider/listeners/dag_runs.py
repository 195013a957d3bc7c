"""The Airflow listener that keeps each job's state in PostgreSQL in step with its DAG run.

Airflow calls the DAG-run hooks in the process that changes the run's state: the scheduler when it
starts a queued run (a new run, or a finished one that a Clear queued again) and when a run's tasks end
it; the api-server when a user marks a run failed or succeeded (the UI, or ``PATCH
/api/v2/dags/{dag_id}/dagRuns/{run_id}``). Both components hold the metadata connection
(``hooks.COMPONENT_CONN_IDS``); the provider's plugin registers this listener in every process that loads
plugins, and a process that never changes a run's state never calls it.

The hooks run inside the scheduler's loop and the API's request, so they only queue the change: one
thread per process applies the queue in order (``lifecycle.reconcile.follow_dag_run``). PostgreSQL being
slow or down never delays scheduling; a change it could not apply is logged, and the maintenance DAG's
daily ``reconcile_jobs`` still catches a job left ``running``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from airflow.listeners import hookimpl

from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.lifecycle.maintenance.reconcile import follow_dag_run

log = logging.getLogger(__name__)

#: changes waiting for PostgreSQL at most; beyond it (PostgreSQL down for long) new ones are dropped and
#: logged: the daily reconcile is the backstop
MAX_PENDING = 1000


@dataclass(frozen=True)
class DagRunChange:
    """One state change of a DAG run, as the hook saw it (plain values: the ORM object stays in Airflow's
    session)."""

    dag_id: str
    run_id: str
    state: str
    at: datetime | None
    note: str


class DagRunJobs:
    """Listener on DAG-run state changes: ``running`` after a Clear restarts a failed job's run (timed from
    the restart); ``failed`` or ``success`` fails a job its run left ``running``."""

    def __init__(self, metadata_conn_id: str = MetadataHook.default_conn_name, max_pending: int = MAX_PENDING) -> None:
        self.metadata_conn_id = metadata_conn_id
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._pid: int | None = None  # the process the queue and thread belong to (a fork gets its own)
        self._queue: queue.Queue[DagRunChange] | None = None

    # Airflow's hooks (airflow/listeners/spec/dagrun.py): they never raise into Airflow

    @hookimpl
    def on_dag_run_running(self, dag_run: Any, msg: str) -> None:
        self.submit(dag_run, "running", getattr(dag_run, "start_date", None), msg)

    @hookimpl
    def on_dag_run_success(self, dag_run: Any, msg: str) -> None:
        self.submit(dag_run, "success", getattr(dag_run, "end_date", None), msg)

    @hookimpl
    def on_dag_run_failed(self, dag_run: Any, msg: str) -> None:
        self.submit(dag_run, "failed", getattr(dag_run, "end_date", None), msg)

    def submit(self, dag_run: Any, state: str, at: datetime | None, note: str | None) -> None:
        """Queue the change for this process's thread; never raises (the caller is Airflow's scheduler loop
        or an API request)."""
        try:
            change = DagRunChange(str(dag_run.dag_id), str(dag_run.run_id), state, at, str(note or ""))
            self._pending().put_nowait(change)
        except queue.Full:
            log.warning(
                "e2e3d job tracking: %d DAG-run changes wait for PostgreSQL; dropped %s -> %s (the daily "
                "reconcile_jobs catches what is left running)",
                self.max_pending,
                getattr(dag_run, "run_id", "?"),
                state,
            )
        except Exception:
            log.exception("e2e3d job tracking: could not queue a DAG-run change")

    def apply(self, change: DagRunChange) -> list[str]:
        """Apply one change to the jobs of its DAG run (in the calling thread); returns the jobs changed.
        A hook of its own each time, as a task's: the connection is read as it is now (edited, rotated)."""
        metadata = MetadataHook(self.metadata_conn_id)
        return follow_dag_run(metadata, change.dag_id, change.run_id, change.state, at=change.at, note=change.note)

    def wait_idle(self, timeout: float) -> bool:
        """True once every change queued in this process is applied (False when ``timeout`` passes first)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                pending = self._queue if self._pid == os.getpid() else None
            if pending is None or pending.unfinished_tasks == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _pending(self) -> queue.Queue[DagRunChange]:
        """This process's queue, its thread started on the first change (a forked child starts its own:
        the parent's thread does not exist there)."""
        with self._lock:
            if self._queue is None or self._pid != os.getpid():
                self._pid, self._queue = os.getpid(), queue.Queue(self.max_pending)
                threading.Thread(target=self._work, args=(self._queue,), name="e2e3d-dag-run-jobs", daemon=True).start()
            return self._queue

    def _work(self, pending: queue.Queue[DagRunChange]) -> None:
        while True:
            change = pending.get()
            try:
                changed = self.apply(change)
                if changed:
                    log.info("e2e3d job tracking: DAG run %s %s -> jobs %s", change.run_id, change.state, changed)
            except Exception as err:  # PostgreSQL down, no metadata connection here: the backstop catches it
                log.warning(
                    "e2e3d job tracking: DAG run %s of %s became %s, but its jobs could not be updated: %s",
                    change.run_id,
                    change.dag_id,
                    change.state,
                    err,
                )
            finally:
                pending.task_done()


#: the instance the plugin registers (one per process)
DAG_RUN_JOBS = DagRunJobs()
