"""What an operator derives from its task context and rendered templates: the run stamp, flags."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from e2e3d_provider.layout import make_stamp, validate_stamp


def run_stamp(context: Any, explicit: str | None = None) -> str:
    """The explicit stamp, else the DAG run's ``run_after`` (or logical date) as a UTC stamp, so
    every task and every retry of one DAG run agrees on the stamp without passing it around."""
    if explicit and explicit != "None":
        return validate_stamp(explicit)
    dag_run = context.get("dag_run") if context else None
    when: datetime | None = None
    if dag_run is not None:
        when = getattr(dag_run, "run_after", None) or getattr(dag_run, "logical_date", None)
    return make_stamp(when)


def as_bool(value: object) -> bool:
    """A flag that may arrive rendered from a template (``"True"``, ``"false"``, ``"0"``...)."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off", "", "none"):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    return bool(value)
