"""A Sphinx extension that writes the configuration tables from the provider's declared settings.

At ``builder-inited`` it renders ``markdown_table("airflow")`` and ``markdown_table("platform")`` of
``e2e3d_provider.core.settings`` (every ``[e2e3d]`` Airflow option and every ``e2e3d.config`` key, with type,
default, description and example) into ``_generated/settings-airflow.md`` and ``_generated/settings-platform.md``,
which ``configuration.md`` includes. The tables are generated, never copied, so they follow the code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sphinx.application import Sphinx

GENERATED = "_generated"
SCOPES = {"airflow": "settings-airflow.md", "platform": "settings-platform.md"}


def write_tables(app: Sphinx) -> None:
    """Write one table per scope before Sphinx reads the sources (only when it changed)."""
    from e2e3d_provider.core.settings import markdown_table

    for scope, page in SCOPES.items():
        text = markdown_table(scope)
        target = Path(app.srcdir) / GENERATED / page
        if not target.exists() or target.read_text() != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("builder-inited", write_tables)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
