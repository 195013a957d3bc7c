"""The naming contract: ids, stamps, relative paths, local paths and object keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from e2e3d_provider.core import layout
from e2e3d_provider.core.layout import InvalidNameError

VALID_IDS = ["a", "A1", "job-42", "scan_2026.11.24", "x" * 128, "0", "dataset.v2"]
INVALID_IDS = [
    "",
    " ",
    "..",
    "a..b",
    "../etc",
    "/abs",
    "a/b",
    "a\\b",
    ".hidden",
    "-dash",
    "_under",
    "x" * 129,
    "tab\there",
    "nul\x00",
    "new\nline",
    "del\x7f",
    "spa ce",
    "é",
    "a;rm -rf",
    "$(id)",
    "~root",
    "a:b",
    "C:\\x",
]


@pytest.mark.parametrize("value", VALID_IDS)
def test_valid_ids_pass(value: str) -> None:
    assert layout.validate_id(value) == value


@pytest.mark.parametrize("value", INVALID_IDS)
def test_invalid_ids_are_rejected_with_the_kind_named(value: str) -> None:
    with pytest.raises(InvalidNameError, match="invalid job_id"):
        layout.validate_id(value, "job_id")


@pytest.mark.parametrize("value", [None, 5, b"bytes", ["a"]])
def test_non_string_ids_are_rejected(value: object) -> None:
    with pytest.raises(InvalidNameError, match="must be a string"):
        layout.validate_id(value)


def test_ids_are_validated_before_any_path_or_key_is_built(tmp_path: Path) -> None:
    for build in (
        lambda v: layout.input_dir(tmp_path, v),
        layout.input_prefix,
        layout.output_prefix,
        lambda v: layout.output_key(v, "mesh/a.obj"),
        layout.success_key,
        layout.manifest_key,
        lambda v: layout.archive_prefix(v, "20260101T000000Z"),
        lambda v: layout.RunLayout(tmp_path, v, "20260101T000000Z"),
    ):
        with pytest.raises(InvalidNameError):
            build("../escape")


def test_stamps_round_trip_in_utc() -> None:
    when = datetime(2026, 11, 24, 22, 5, 9, tzinfo=timezone(timedelta(hours=2)))
    stamp = layout.make_stamp(when)
    assert stamp == "20261124T200509Z"
    assert layout.parse_stamp(stamp) == when.astimezone(UTC)
    assert layout.STAMP_PATTERN.fullmatch(layout.make_stamp())


@pytest.mark.parametrize(
    "value", ["", "2026-11-24T20:05:09Z", "20261124T200509", "20261340T000000Z", "20261124T250000Z", "x0261124T200509Z"]
)
def test_bad_stamps_are_rejected(value: str) -> None:
    with pytest.raises(InvalidNameError):
        layout.validate_stamp(value)


def test_naive_datetimes_make_no_stamp() -> None:
    with pytest.raises(InvalidNameError):
        layout.make_stamp(datetime(2026, 1, 1))


@pytest.mark.parametrize(
    "value", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a/./b", "a\\b", "", "a\x00b", "a\nb", "x" * 800, "a/"]
)
def test_hostile_relative_paths_are_rejected(value: str) -> None:
    with pytest.raises(InvalidNameError):
        layout.validate_relpath(value)


def test_run_layout_matches_the_design(tmp_path: Path) -> None:
    run = layout.RunLayout(tmp_path, "job1", "20260101T000000Z")
    assert run.run_dir == tmp_path / "output" / "job1" / "job1_20260101T000000Z"
    assert run.temp_dir == tmp_path / "temp" / "job1_20260101T000000Z"
    assert run.success_path == run.run_dir / "SUCCESS"
    assert run.manifest_path == run.run_dir / "metadata.json"
    assert run.path(layout.MESH_RELPATH) == run.run_dir / "mesh" / "reconstructed_mesh.obj"
    assert layout.input_dir(tmp_path, "ds1") == tmp_path / "input" / "ds1"


def test_object_keys_match_the_design() -> None:
    assert layout.output_key("job1", "mesh/reconstructed_mesh.obj") == "job1/mesh/reconstructed_mesh.obj"
    assert layout.success_key("job1") == "job1/SUCCESS"
    assert layout.manifest_key("job1") == "job1/metadata.json"
    assert layout.input_prefix("ds1") == "ds1/"
    assert layout.archive_prefix("job1", "20260101T000000Z") == "job1/job1_20260101T000000Z/"
    assert layout.normalize_prefix("/a/b/") == "a/b/"
    assert layout.normalize_prefix("") == ""


def test_keys_that_would_escape_a_download_directory_are_rejected(tmp_path: Path) -> None:
    assert layout.key_relpath("ds/a/b.jpg", "ds/") == "a/b.jpg"
    for key in ("ds/../x", "ds//x", "ds/a/../../x", "other/x"):
        with pytest.raises(InvalidNameError):
            layout.key_relpath(key, "ds/")
    assert layout.local_path_for(tmp_path, "a/b.jpg") == tmp_path / "a" / "b.jpg"


def test_data_root_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from e2e3d_provider.operators.run_context import data_root

    monkeypatch.delenv(layout.DATA_ROOT_ENV, raising=False)
    monkeypatch.delenv("AIRFLOW_VAR_E2E3D_DATA_ROOT", raising=False)
    assert data_root() == Path(layout.DEFAULT_DATA_ROOT)
    monkeypatch.setenv("AIRFLOW_VAR_E2E3D_DATA_ROOT", str(tmp_path / "var"))
    assert data_root() == tmp_path / "var"
    monkeypatch.setenv(layout.DATA_ROOT_ENV, str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "arg") == tmp_path / "arg"


@pytest.mark.parametrize("name", ["input", "output", "my-bucket.v2"])
def test_valid_bucket_names(name: str) -> None:
    assert layout.validate_bucket(name) == name


@pytest.mark.parametrize("name", ["", "ab", "Upper", "under_score", "a..b", "-lead", "x" * 64, "../x"])
def test_invalid_bucket_names(name: str) -> None:
    with pytest.raises(InvalidNameError):
        layout.validate_bucket(name)


def test_a_derived_job_id_is_readable_and_keeps_runs_of_one_second_apart() -> None:
    first = layout.derived_job_id("terrain", "20261125T040919Z", "manual__2026-11-25T04:09:19.586546+00:00")
    second = layout.derived_job_id("terrain", "20261125T040919Z", "manual__2026-11-25T04:09:19.912004+00:00")
    assert first.startswith("terrain-20261125T040919Z-") and len(first) == len("terrain-20261125T040919Z-") + 6
    assert first != second and layout.validate_id(first) == first
    assert layout.validate_id(layout.derived_job_id("d" * 128, "20261125T040919Z", "r")) is not None


def test_result_kinds_are_the_words_the_api_uses() -> None:
    assert [layout.result_kind(p) for p in ("mesh/m.obj", "textures/t.png", "pointcloud/p.ply", "logs/x.log")] == [
        "mesh",
        "texture",
        "pointcloud",
        "log",
    ]
    assert layout.result_kind("metadata.json") == "file" and layout.result_kind("extra/x.bin") == "extra"
