"""e2e3d-provider: the storage layer of the E2E3D 3D-reconstruction platform for Apache Airflow 3."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

PACKAGE_NAME = "e2e3d-provider"
INTEGRATION_NAME = "E2E3D Storage"


def get_provider_info() -> dict[str, Any]:
    """The provider's registration with Airflow (entry point group ``apache_airflow_provider``).

    The object-storage and metadata hooks reuse Airflow's standard ``aws`` and ``postgres``
    connection types (registered by the amazon and postgres providers), so no connection
    type is claimed here: claiming them again would clash with those providers.

    The results-API plugin is registered through the ``airflow.plugins`` entry point, not a
    ``plugins`` entry here: Airflow loads provider-declared plugins only when
    ``[core] lazy_discover_providers`` is off, and entry-point plugins always.
    """
    return {
        "package-name": PACKAGE_NAME,
        "name": "E2E3D",
        "description": "Storage layer of the E2E3D 3D-reconstruction platform: object storage (MinIO/S3) "
        "and PostgreSQL metadata hooks, transfers with checksums, lifecycle operators and sensors.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION_NAME,
                "external-doc-url": "https://min.io/docs/minio/linux/index.html",
                "tags": ["software"],
            }
        ],
        "hooks": [
            {
                "integration-name": INTEGRATION_NAME,
                "python-modules": ["e2e3d_provider.hooks.storage", "e2e3d_provider.hooks.metadata"],
            }
        ],
        "operators": [
            {
                "integration-name": INTEGRATION_NAME,
                "python-modules": [
                    "e2e3d_provider.operators.stage_in",
                    "e2e3d_provider.operators.upload_results",
                    "e2e3d_provider.operators.cleanup",
                    "e2e3d_provider.operators.metadata_record",
                    "e2e3d_provider.operators.archive",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": INTEGRATION_NAME,
                "python-modules": ["e2e3d_provider.sensors.success_marker", "e2e3d_provider.sensors.input_presence"],
            }
        ],
        "triggers": [
            {"integration-name": INTEGRATION_NAME, "python-modules": ["e2e3d_provider.triggers.object_storage"]}
        ],
    }
