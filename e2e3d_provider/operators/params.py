"""Trigger-form params of the E2E3D DAGs: ids checked as the naming contract checks them, right-sizing
settings with their JSON schema, each with a title, a Markdown description and a form section.

Airflow validates a run's params against these schemas itself (the api-server, for a REST or UI trigger),
so a bad value is refused before a run exists, with the message the schema gives.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from e2e3d_provider.core.layout import ID_JSON_PATTERN, ID_RULE
from e2e3d_provider.lifecycle.results.rightsize import RightSizePolicy


def form_param(default: Any, *, title: str, description_md: str, section: str, **schema: Any) -> Param:
    """A param as the trigger form shows it: ``title`` as its label, ``description_md`` rendered as Markdown
    below it (Airflow's UI shows the plain ``description`` instead when one is set, so none is), in the
    collapsible ``section``."""
    return Param(default, title=title, description_md=description_md, section=section, **schema)


def id_param(
    default: str | None, *, kind: str, title: str, description_md: str, section: str, optional: bool = False
) -> Param:
    """A dataset or job id param: ``pattern`` is the naming contract's (:data:`ID_JSON_PATTERN`), and a value
    that breaks it is refused with the rule in words. (JSON schema has no error-message keyword and Airflow
    shows the error jsonschema ranks first: an ``if``/``then`` whose ``then`` only asks for a ``const`` saying
    the rule, and that has no ``type``, ranks above the ``pattern`` error, so the message reads "'a dataset id
    of 1-128 characters ...' was expected" rather than a regular expression.)

    ``optional`` admits null: the form marks a param required unless its type admits null."""
    rule = f"a {kind} of {ID_RULE}"
    return form_param(
        default,
        title=title,
        description_md=f"{description_md}\n\n{ID_RULE[0].upper()}{ID_RULE[1:]}.",
        section=section,
        type=["null", "string"] if optional else "string",
        pattern=ID_JSON_PATTERN,
        maxLength=128,
        **{"if": {"type": "string", "not": {"pattern": ID_JSON_PATTERN}}, "then": {"const": rule}},
    )


def right_size_settings_param(*, section: str) -> Param:
    """``right_size_settings``: :class:`RightSizePolicy` fields over the ``e2e3d.config`` defaults, with the
    policy's JSON schema (every field's type and bounds; unknown keys refused)."""
    schema = RightSizePolicy.json_schema()
    names = ", ".join(f"`{name}`" for name in schema["properties"])
    return form_param(
        {},
        title="Right-sizing settings",
        description_md=(
            "Overrides of the right-sizing policy as a JSON object, over the `rightsize` key of `e2e3d.config`; "
            '`{}` keeps those. For example `{"web_format": "webp", "tile_threshold": 2048}`.\n\n'
            f"Settings: {names}."
        ),
        section=section,
        **schema,
    )
