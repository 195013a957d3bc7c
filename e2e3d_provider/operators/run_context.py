"""What an operator derives from its task context and rendered templates: the run stamp, flags."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.configuration import conf
from airflow.sdk import Context, Variable
from airflow.sdk.api.client import ServerResponseError
from airflow.sdk.exceptions import AirflowRuntimeError

from e2e3d_provider.core.layout import DATA_ROOT_ENV, DATA_ROOT_VARIABLE, make_stamp, resolve_data_root, validate_stamp
from e2e3d_provider.lifecycle.worker.host_sweep import ScratchBounds


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The local data root: the argument, ``$E2E3D_DATA_ROOT``, the Airflow Variable ``e2e3d_data_root``
    (looked up only when the first two are unset), or ``/app/data``."""
    if explicit or os.environ.get(DATA_ROOT_ENV):
        return resolve_data_root(explicit)
    return resolve_data_root(None, Variable.get(DATA_ROOT_VARIABLE, default=None))


def run_stamp(context: Context, explicit: str | None = None) -> str:
    """The explicit stamp, else the DAG run's ``run_after`` (or logical date) as a UTC stamp, so
    every task and every retry of one DAG run agrees on the stamp without passing it around."""
    if explicit:
        return validate_stamp(explicit)
    dag_run = context.get("dag_run")
    when: datetime | None = None
    if dag_run is not None:
        when = getattr(dag_run, "run_after", None) or getattr(dag_run, "logical_date", None)
    return make_stamp(when)


def dag_run_state(ti: Any, dag_id: str, run_id: str) -> str | None:
    """The state of a DAG run as a running task sees it (``ti`` is its task instance): ``None`` when
    Airflow has no such run, ``"unknown"`` when the lookup itself failed."""
    status_code: Any
    try:
        state = ti.get_dagrun_state(dag_id=dag_id, run_id=run_id)
    except ServerResponseError as err:  # dag.test() runs the execution API in-process
        status_code = err.response.status_code
    except AirflowRuntimeError as err:  # a supervised task gets the API's answer as an error response
        status_code = (err.error.detail or {}).get("status_code") if isinstance(err.error.detail, dict) else None
    else:
        return str(getattr(state, "value", state))  # an enum member or its plain value
    return None if status_code == 404 else "unknown"


def run_is_live(ti: Any, dag_id: str, run_id: str) -> bool:
    """True unless the DAG run has ended or is gone (an unknown answer counts as live: the safe side)."""
    return dag_run_state(ti, dag_id, run_id) not in (None, "success", "failed")


def as_bool(value: object) -> bool:
    """A flag that may arrive rendered from a template (``"True"``, ``"false"``, ``"0"``...)."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off", ""):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    return bool(value)


def scratch_bounds(temp_max_age_hours: float | None = None) -> ScratchBounds:
    """This worker's scratch bounds: the input cache's from Airflow's configuration of the worker, section
    ``[e2e3d]`` (``cache_max_bytes``, ``cache_max_age_hours``, ``sweep_every_seconds``; env
    ``AIRFLOW__E2E3D__...``: each worker knows its own disk), the temp dirs' age as given (the platform's
    ``temp_max_age_hours`` from ``e2e3d.config``)."""
    default = ScratchBounds()
    return ScratchBounds(
        cache_max_bytes=conf.getint("e2e3d", "cache_max_bytes", fallback=default.cache_max_bytes),
        cache_max_age_hours=conf.getfloat("e2e3d", "cache_max_age_hours", fallback=default.cache_max_age_hours),
        temp_max_age_hours=default.temp_max_age_hours if temp_max_age_hours is None else temp_max_age_hours,
        every_seconds=conf.getfloat("e2e3d", "sweep_every_seconds", fallback=default.every_seconds),
    )
