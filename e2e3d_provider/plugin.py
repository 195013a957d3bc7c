"""The Airflow plugin that mounts the E2E3D results API on the api-server under ``/e2e3d``."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from e2e3d_provider.api.app import create_app

URL_PREFIX = "/e2e3d"


class E2E3DPlugin(AirflowPlugin):
    """Registers the results API (``/e2e3d/api/...``); the provider declares it, so installing the
    package is enough."""

    name = "e2e3d"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "E2E3D results API"}]
