"""Sphinx configuration of the e2e3d-provider docs: MyST Markdown pages, the furo theme, and nothing fetched.

The build runs offline with warnings as errors (``tests/test_docs.py``): no intersphinx, no remote images, no
linkcheck. The CLI page is generated from the parser (``sphinx_argparse_cli``), the API reference from the
FastAPI app's OpenAPI document (``_ext/openapi_page.py``), so neither can drift from the code.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
# importing the API app and the operators imports Airflow, which writes an airflow.cfg into AIRFLOW_HOME: keep it
# out of the user's ~/airflow when sphinx-build runs by hand (the test sets its own)
os.environ.setdefault("AIRFLOW_HOME", str(Path(tempfile.gettempdir()) / "e2e3d-docs-airflow-home"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

import e2e3d_provider  # noqa: E402

project = "e2e3d-provider"
author = "E2E3D maintainers"
copyright = "2026, E2E3D maintainers"
release = e2e3d_provider.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx_argparse_cli",
    "openapi_page",
    "settings_page",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
# the screenshot folders hold images only; _generated holds pages the extensions write, included by others
exclude_patterns = ["_build", "_generated", "dashboard", "viewer", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist", "fieldlist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}

html_theme = "furo"
html_title = f"e2e3d-provider {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
