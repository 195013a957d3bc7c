"""e2e3d-provider: the storage layer of the E2E3D 3D-reconstruction platform for Apache Airflow 3."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any

__version__ = "0.5.0"

PACKAGE_NAME = "e2e3d-provider"
INTEGRATION_NAME = "E2E3D Storage"


def get_provider_info() -> dict[str, Any]:
    """The provider's registration with Airflow (entry point group ``apache_airflow_provider``).

    The object-storage and metadata hooks reuse Airflow's standard ``aws`` and ``postgres``
    connection types (registered by the amazon and postgres providers; claiming them again would
    clash). The provider adds one type of its own, ``e2e3d_s3`` (the same fields as ``aws``), so
    the UI's Test button runs our bucket listing on MinIO instead of STS GetCallerIdentity.

    The results-API plugin is registered through the ``airflow.plugins`` entry point, not a
    ``plugins`` entry here: Airflow loads provider-declared plugins only when
    ``[core] lazy_discover_providers`` is off, and entry-point plugins always.

    ``config`` comes from ``e2e3d_provider.core.settings``, where every option is declared once.
    """
    from e2e3d_provider.core.settings import provider_config

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
                    "e2e3d_provider.operators.workspace",
                    "e2e3d_provider.operators.rightsize",
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
        "task-decorators": [
            {"name": "e2e3d_workspace", "class-name": "e2e3d_provider.decorators.workspace.workspace_task"}
        ],
        "triggers": [
            {"integration-name": INTEGRATION_NAME, "python-modules": ["e2e3d_provider.triggers.object_storage"]}
        ],
        # the lifecycle's tasks carry them themselves (operator_extra_links); named here for Airflow's providers list
        "extra-links": [
            "e2e3d_provider.links.ViewerLink",
            "e2e3d_provider.links.ResultsLink",
            "e2e3d_provider.links.DashboardLink",
        ],
        # the [e2e3d] options with their defaults, so `airflow config list --section e2e3d` shows them
        "config": provider_config(),
        # a type of our own beside ``aws`` (which the amazon provider owns and keeps): the same fields, but the UI's
        # Test button runs our hook (lists buckets) instead of STS GetCallerIdentity, which MinIO does not serve.
        # ui-field-behaviour is read from here since Airflow 3.2; S3CompatibleStorageHook.get_ui_field_behaviour
        # says the same for 3.1 (tests/test_storage_credentials.py keeps the two equal)
        "connection-types": [
            {
                "connection-type": "e2e3d_s3",
                "hook-class-name": "e2e3d_provider.hooks.storage.S3CompatibleStorageHook",
                "hook-name": "E2E3D object storage (S3-compatible, e.g. MinIO)",
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "schema", "port"],
                    "relabeling": {"login": "Access key ID", "password": "Secret access key"},
                    "placeholders": {
                        "login": "(empty: extra profile_name, role_arn or the AWS default credential chain)",
                        "extra": '{"endpoint_url": "http://minio:9000", "region_name": "us-east-1", "verify": true, '
                        '"presign_endpoint_url": "http://localhost:9000", "retry_deadline": 120}',
                    },
                },
            }
        ],
    }


#: Modules that moved when the package took its layered shape (0.2) and the lifecycle its rooms (0.4):
#: old name -> new name. Importing an old name still works, with a DeprecationWarning; the old names go
#: in a later release.
MOVED_MODULES = {
    "e2e3d_provider.layout": "e2e3d_provider.core.layout",
    "e2e3d_provider.manifest": "e2e3d_provider.core.manifest",
    "e2e3d_provider.transfer": "e2e3d_provider.core.transfer",
    "e2e3d_provider.input_check": "e2e3d_provider.core.readiness",
    "e2e3d_provider.commit": "e2e3d_provider.lifecycle.results.publish",
    "e2e3d_provider.ingest": "e2e3d_provider.lifecycle.inputs.ingest",
    "e2e3d_provider.operators.maintenance": "e2e3d_provider.lifecycle.maintenance.steps",
    "e2e3d_provider.operators.local_paths": "e2e3d_provider.core.local_paths",
    "e2e3d_provider.stack": "e2e3d_provider.devstack.stack",
    "e2e3d_provider.demo": "e2e3d_provider.devstack.demo",
    "e2e3d_provider.reconstruct": "e2e3d_provider.devstack.reconstruct",
    # 0.4: the lifecycle in rooms, and one spelling of right-size
    "e2e3d_provider.operators.right_size": "e2e3d_provider.operators.rightsize",
    "e2e3d_provider.lifecycle.datasets": "e2e3d_provider.lifecycle.inputs.datasets",
    "e2e3d_provider.lifecycle.ingest": "e2e3d_provider.lifecycle.inputs.ingest",
    "e2e3d_provider.lifecycle.readiness": "e2e3d_provider.lifecycle.inputs.readiness",
    "e2e3d_provider.lifecycle.handoff": "e2e3d_provider.lifecycle.results.handoff",
    "e2e3d_provider.lifecycle.publish": "e2e3d_provider.lifecycle.results.publish",
    "e2e3d_provider.lifecycle.record": "e2e3d_provider.lifecycle.results.record",
    "e2e3d_provider.lifecycle.right_size": "e2e3d_provider.lifecycle.results.rightsize",
    "e2e3d_provider.lifecycle.input_cache": "e2e3d_provider.lifecycle.worker.input_cache",
    "e2e3d_provider.lifecycle.stage_in": "e2e3d_provider.lifecycle.worker.stage_in",
    "e2e3d_provider.lifecycle.local_paths": "e2e3d_provider.core.local_paths",
    "e2e3d_provider.lifecycle.write_back": "e2e3d_provider.lifecycle.worker.write_back",
    "e2e3d_provider.lifecycle.workspace": "e2e3d_provider.lifecycle.worker.workspace",
    "e2e3d_provider.lifecycle.scratch": "e2e3d_provider.lifecycle.worker.scratch",
    "e2e3d_provider.lifecycle.host_sweep": "e2e3d_provider.lifecycle.worker.host_sweep",
    "e2e3d_provider.lifecycle.partials": "e2e3d_provider.lifecycle.worker.partials",
    "e2e3d_provider.lifecycle.archive": "e2e3d_provider.lifecycle.durability.archive",
    "e2e3d_provider.lifecycle.retention": "e2e3d_provider.lifecycle.durability.retention",
    "e2e3d_provider.lifecycle.backup": "e2e3d_provider.lifecycle.durability.backup",
    "e2e3d_provider.lifecycle.restore": "e2e3d_provider.lifecycle.durability.restore",
    "e2e3d_provider.lifecycle.scrub": "e2e3d_provider.lifecycle.durability.scrub",
    "e2e3d_provider.lifecycle.hygiene": "e2e3d_provider.lifecycle.maintenance.hygiene",
    "e2e3d_provider.lifecycle.reconcile": "e2e3d_provider.lifecycle.maintenance.reconcile",
    "e2e3d_provider.lifecycle.dashboard": "e2e3d_provider.lifecycle.maintenance.dashboard",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module name to the module that now holds its code."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # a placeholder, swapped for the real module in exec_module

    def exec_module(self, module: ModuleType) -> None:
        new_name = MOVED_MODULES[module.__name__]
        warnings.warn(f"{module.__name__} moved to {new_name}; import it from there", DeprecationWarning, stacklevel=2)
        sys.modules[module.__name__] = importlib.import_module(new_name)


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
