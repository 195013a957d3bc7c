"""A Sphinx extension that writes the configuration tables from the provider's declared settings.

At ``builder-inited`` it renders ``markdown_table("airflow")`` and ``markdown_table("platform")`` of
``e2e3d_provider.core.settings`` (every ``[e2e3d]`` Airflow option and every ``e2e3d.config`` key, with type,
default, description and example) into ``_generated/settings-airflow.md`` and ``_generated/settings-platform.md``,
which ``configuration.md`` includes. The tables are generated, never copied, so they follow the code. Where the
installed package has no settings module yet, each file says so instead, and the build still succeeds.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx

GENERATED = "_generated"
MODULES = ("e2e3d_provider.core.settings", "e2e3d_provider.settings")  # where the declarations live
SCOPES = {"airflow": "settings-airflow.md", "platform": "settings-platform.md"}


def renderer() -> Callable[[str], str] | None:
    """The settings module's ``markdown_table(scope)``, or None when the installed package has none."""
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        table = getattr(module, "markdown_table", None)
        if callable(table):
            return table
    return None


def write_tables(app: Sphinx) -> None:
    """Write one table per scope before Sphinx reads the sources (only when it changed)."""
    table = renderer()
    for scope, page in SCOPES.items():
        if table is None:
            text = (
                "*This installation declares no settings module (`markdown_table` in "
                f"{' or '.join(MODULES)}), so this table is empty.*\n"
            )
        else:
            text = table(scope)
        target = Path(app.srcdir) / GENERATED / page
        if not target.exists() or target.read_text() != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("builder-inited", write_tables)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
