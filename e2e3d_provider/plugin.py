"""The Airflow plugin that mounts the E2E3D results API on the api-server under ``/e2e3d`` and keeps each
job's state in step with its DAG run (a listener on DAG-run state changes)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from e2e3d_provider.api.app import create_app
from e2e3d_provider.hooks.telemetry import TASK_END_LISTENER
from e2e3d_provider.listeners.dag_runs import DAG_RUN_JOBS

URL_PREFIX = "/e2e3d"


class E2E3DPlugin(AirflowPlugin):
    """Registers the results API (``/e2e3d/api/...``), the storage dashboard (``/e2e3d/dashboard``) and the
    3D viewer (``/e2e3d/viewer``), both under Browse in the UI, the viewer also as a DAG run's "3D view" tab;
    the provider declares it, so installing the package is enough."""

    name = "e2e3d"
    #: TASK_END_LISTENER writes a task's storage-error rows before its process ends, whatever the outcome
    #: (hooks/telemetry.py); DAG_RUN_JOBS keeps job tracking in step with the DAG run as Airflow changes it
    #: (a Clear, a run marked failed or succeeded), called where the run's state changes: in the scheduler and
    #: the api-server
    listeners = [TASK_END_LISTENER, DAG_RUN_JOBS]
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "E2E3D results API"}]
    #: the storage dashboard and the 3D viewer in the Airflow UI's Browse menu, and the viewer as a tab of every
    #: DAG run (the UI puts the run's ids in the href: the viewer finds the run's job by them), shown in the
    #: UI's frame (the UI's login cookie reaches the pages: same origin), served by the app above
    external_views = [
        {
            "name": "E2E3D storage",
            "href": f"{URL_PREFIX}/dashboard",
            "destination": "nav",
            "url_route": "e2e3d-storage",
            "category": "browse",
        },
        {
            "name": "E2E3D viewer",
            "href": f"{URL_PREFIX}/viewer",
            "destination": "nav",
            "url_route": "e2e3d-viewer",
            "category": "browse",
        },
        {
            "name": "3D view",
            "href": f"{URL_PREFIX}/viewer?dag_id={{DAG_ID}}&run_id={{RUN_ID}}",
            "destination": "dag_run",
            "url_route": "e2e3d-view",
        },
    ]
