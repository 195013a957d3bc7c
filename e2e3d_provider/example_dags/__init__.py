"""The example DAGs, shipped in the package so an installed wheel has them (``e2e3d dags``).

In a checkout, the repository's ``dags/`` is a link to this folder: one copy of each DAG file.
The files are DAG definitions for Airflow's DAG processor, not modules to import.
"""

from __future__ import annotations

from pathlib import Path

#: the folder holding the example DAG files (a DAG bundle path, or the source of ``e2e3d dags --copy``)
DAGS_DIR = Path(__file__).resolve().parent


def dag_files() -> list[Path]:
    """The example DAG files, sorted by name."""
    return sorted(p for p in DAGS_DIR.glob("*.py") if p.name != "__init__.py")
