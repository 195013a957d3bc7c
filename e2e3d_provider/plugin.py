"""The Airflow plugin that mounts the E2E3D results API on the api-server under ``/e2e3d``."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from e2e3d_provider.api.app import create_app
from e2e3d_provider.hooks.telemetry import TASK_END_LISTENER

URL_PREFIX = "/e2e3d"


class E2E3DPlugin(AirflowPlugin):
    """Registers the results API (``/e2e3d/api/...``) and the storage dashboard (``/e2e3d/dashboard``,
    under Browse in the UI); the provider declares it, so installing the package is enough."""

    name = "e2e3d"
    #: writes a task's storage-error rows before its process ends, whatever the outcome (hooks/telemetry.py)
    listeners = [TASK_END_LISTENER]
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "E2E3D results API"}]
    #: the storage dashboard in the Airflow UI's Browse menu, shown in the UI's frame (the UI's login cookie
    #: reaches the page: same origin), served by the app above
    external_views = [
        {
            "name": "E2E3D storage",
            "href": f"{URL_PREFIX}/dashboard",
            "destination": "nav",
            "url_route": "e2e3d-storage",
            "category": "browse",
        }
    ]
