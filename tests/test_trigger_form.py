"""The example DAGs' trigger forms, as Airflow builds them from the installed package: every param labelled,
described in Markdown and in a section; ids refused by Airflow's own param validation (the SDK's and the
api-server's, from the serialized DAG) with the rule in words; right-sizing settings with a JSON schema that
accepts exactly what the right-sizing policy accepts."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonschema
import pytest

from e2e3d_provider.core.layout import ID_JSON_PATTERN, ID_RULE, validate_id
from e2e3d_provider.example_dags import DAGS_DIR
from e2e3d_provider.exceptions import InvalidNameError
from e2e3d_provider.rightsize.policy import RightSizePolicy

BAD_IDS = ["bad id!", "a..b", "x" * 129, ".hidden", "-x", "", "a/b", "abc\n", "é"]
GOOD_IDS = ["terrain", "a.b_c-d", "x" * 128, "0", "x."]


@pytest.fixture(scope="module")
def dags() -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags


_SERVED: dict[int, Any] = {}


def served(dag: Any) -> Any:
    """The DAG as the api-server holds it (serialized by the DAG processor, read back): what a REST or UI
    trigger is validated against (``deep_merge`` copies, so one is read back per DAG)."""
    from airflow.serialization.serialized_objects import DagSerialization

    if id(dag) not in _SERVED:
        _SERVED[id(dag)] = DagSerialization.from_dict(json.loads(json.dumps(DagSerialization.to_dict(dag))))
    return _SERVED[id(dag)]


def test_every_param_has_a_title_a_markdown_description_and_a_section(dags: dict[str, Any]) -> None:
    with_params = {dag_id: dag for dag_id, dag in dags.items() if dag.params}
    assert {"e2e3d_reconstruction", "e2e3d_maintenance"} <= set(with_params)
    for dag_id, dag in with_params.items():
        served_params = served(dag).params
        for name, param in dag.params.items():
            where = f"{dag_id}.{name}"
            # the UI renders description_md only while the plain description is unset (it shows `x` literally)
            assert param.description is None, where
            for key in ("title", "description_md", "section"):
                assert isinstance(param.schema.get(key), str) and param.schema[key].strip(), (where, key)
            assert served_params.get_param(name).dump()["schema"] == param.schema, where  # what the form gets
    reconstruction = dags["e2e3d_reconstruction"].params
    assert "archive" in reconstruction.get_param("remove_output_after_archive").schema["description_md"]


def test_the_json_id_pattern_is_the_naming_contract() -> None:
    def contract(value: str) -> bool:
        try:
            validate_id(value)
        except InvalidNameError:
            return False
        return True

    for value in [*BAD_IDS, *GOOD_IDS, "a.b..", "a\nb", "Z-9", "ab ", " ab", "a_" * 64]:
        assert bool(re.search(ID_JSON_PATTERN, value)) == contract(value), repr(value)


@pytest.mark.parametrize("name", ["dataset", "job_id"])
def test_a_bad_id_is_refused_by_airflows_param_validation_with_the_rule_in_words(
    dags: dict[str, Any], name: str
) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    dag = dags["e2e3d_reconstruction"]
    for value in BAD_IDS:
        params = copy.deepcopy(dag.params)  # the SDK's check (dag.test, a run's context)
        with pytest.raises(ParamValidationError) as sdk_error:
            params[name] = value
            params.validate()
        with pytest.raises(ParamValidationError) as server_error:  # the api-server's, for a REST or UI trigger
            served(dag).params.deep_merge({name: value}).validate()
        for message in (str(sdk_error.value), str(server_error.value)):
            assert f"Invalid input for param {name}" in message, message
            assert ID_RULE in message and "[A-Za-z0-9]" not in message, message  # the rule in words, not a regex
    for value in GOOD_IDS:
        served(dag).params.deep_merge({name: value}).validate()
    served(dag).params.deep_merge({"job_id": None}).validate()  # job_id may stay empty: then it is derived


def _policy_accepts(settings: dict[str, Any]) -> bool:
    try:
        RightSizePolicy.from_settings(settings)
    except (ValueError, TypeError):
        return False
    return True


SETTINGS_CASES: list[dict[str, Any]] = [
    {},
    {"web_quality": 1},
    {"web_quality": 100},
    {"web_quality": 0},
    {"web_quality": 101},
    {"png_level": 0},
    {"png_level": 6},
    {"png_level": 7},
    {"png_level": -1},
    {"png_min_gain": 0},
    {"png_min_gain": 0.99},
    {"png_min_gain": 1},
    {"png_min_gain": -0.1},
    {"web_format": "webp"},
    {"web_format": "png"},
    {"mesh_lod_ratios": [0.5, 0.1]},
    {"mesh_lod_ratios": [1.0]},
    {"mesh_lod_ratios": [0]},
    {"pointcloud_lod_ratios": [0.3]},
    {"pointcloud_lod_ratios": [1.5]},
    {"mip_min_size": 1},
    {"mip_min_size": 0},
    {"tile_size": 512, "tile_threshold": 2048},
    {"tile_threshold": 0},
    {"pointcloud_max_points": 0},
    {"mesh_error_samples": 0},
    {"max_pixels": 1},
    {"max_pixels": 0},
    {"max_faces": True},
    {"max_line_bytes": 1.5},
    {"max_input_bytes": -1},
    {"mesh_memory_bytes": 1 << 30},
    {"mesh_seconds": 0.5},
    {"mesh_seconds": 0},
    {"mesh_seconds": -1},
    {"preservation": {"keep": ["logs/"], "drop": ["temp/"]}},
    {"preservation": {"keep": "logs/"}},
    {"preservation": {"discard": ["temp/"]}},
    {"web_quality": None, "tile_size": None},
    {"no_such_setting": 1},
]


@pytest.mark.parametrize("settings", SETTINGS_CASES, ids=lambda s: json.dumps(s)[:40])
def test_the_right_size_settings_schema_accepts_what_the_policy_accepts(
    dags: dict[str, Any], settings: dict[str, Any]
) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    param = dags["e2e3d_reconstruction"].params.get_param("right_size_settings")
    try:
        served(dags["e2e3d_reconstruction"]).params.deep_merge({"right_size_settings": settings}).validate()
        form_accepts = True
    except ParamValidationError:
        form_accepts = False
    assert form_accepts == _policy_accepts(settings), (settings, param.schema)


def test_the_right_size_settings_schema_names_every_policy_setting_with_its_default(dags: dict[str, Any]) -> None:
    from dataclasses import fields

    schema = dags["e2e3d_reconstruction"].params.get_param("right_size_settings").schema
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["properties"]) == {f.name for f in fields(RightSizePolicy)}
    defaults = RightSizePolicy().to_dict()
    for name, prop in schema["properties"].items():
        assert prop["default"] == defaults[name], name
        jsonschema.validate(prop["default"], prop)  # each default passes its own property's schema
