"""Maintenance: the steps of the maintenance DAG (``steps``), object-store hygiene, reconciling job
states with Airflow, and the dashboard's figures. The top room: it may use every other one.

``e2e3d_provider.lifecycle.maintenance`` was one module before the rooms (0.4); a name it held still
resolves here from ``steps``, with a DeprecationWarning.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    steps = importlib.import_module(f"{__name__}.steps")
    if not hasattr(steps, name):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"{__name__}.{name} moved to {steps.__name__}.{name}", DeprecationWarning, stacklevel=2)
    return getattr(steps, name)
