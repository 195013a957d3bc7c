"""Mounts the E2E3D results API (``/e2e3d``) from the plugins folder.

When e2e3d-provider is installed as a distribution its provider entry point already registers
the plugin, and registering it twice would be an error, so this file only does it for a source
checkout on the path without installation.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution

try:
    distribution("e2e3d-provider")
except PackageNotFoundError:
    from e2e3d_provider.plugin import E2E3DPlugin  # noqa: F401  (the plugins manager finds it here)
