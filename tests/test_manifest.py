"""Manifests: build, write, read and verify against a run directory."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from e2e3d_provider.core import manifest as mf
from tests.helpers import write_files

FILES = {
    "mesh/reconstructed_mesh.obj": b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n",
    "mesh/reconstructed_mesh.mtl": b"newmtl m\n",
    "textures/texture.png": os.urandom(5000),
    "pointcloud/pointcloud.ply": b"ply\nformat ascii 1.0\nend_header\n",
}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    write_files(tmp_path, FILES)
    (tmp_path / "SUCCESS").write_text("")
    (tmp_path / "metadata.json").write_text("{}")
    return tmp_path


def test_build_lists_every_file_with_size_and_sha_but_no_control_files(run_dir: Path) -> None:
    built = mf.build_manifest(run_dir, "job1", "20260101T000000Z", {"faces": 1})
    assert [e.path for e in built.files] == sorted(FILES)
    for entry in built.files:
        assert entry.size == len(FILES[entry.path])
        assert entry.sha256 == hashlib.sha256(FILES[entry.path]).hexdigest()
    assert built.total_bytes == sum(len(v) for v in FILES.values())
    assert {e.kind for e in built.files} == {"mesh", "texture", "pointcloud"}  # the API's words
    assert built.statistics == {"faces": 1}


def test_write_read_round_trip_and_verify(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    built = mf.build_manifest(run_dir, "job1", "20260101T000000Z")
    target = tmp_path_factory.mktemp("out") / "metadata.json"
    mf.write_manifest(built, target)
    again = mf.read_manifest(target)
    assert again.to_dict() == built.to_dict()
    mf.verify_manifest(run_dir, again)
    assert not list(target.parent.glob("*.partial"))


def test_verify_names_changed_missing_and_unlisted_files(run_dir: Path) -> None:
    built = mf.build_manifest(run_dir, "job1", "20260101T000000Z")
    (run_dir / "mesh/reconstructed_mesh.mtl").write_bytes(b"newmtl x\n")  # same size, other bytes
    (run_dir / "textures/texture.png").unlink()
    (run_dir / "extra.txt").write_text("x")
    with pytest.raises(mf.ManifestError) as caught:
        mf.verify_manifest(run_dir, built)
    message = str(caught.value)
    assert "reconstructed_mesh.mtl: sha256 differs" in message
    assert "texture.png: missing" in message
    assert "extra.txt: not in the manifest" in message


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        json.dumps({"job_id": "j"}),
        json.dumps({"version": 1, "job_id": "../x", "stamp": "20260101T000000Z", "files": []}),
        json.dumps(
            {
                "version": 1,
                "job_id": "j",
                "stamp": "20260101T000000Z",
                "files": [{"path": "../x", "size": 1, "sha256": "0" * 64}],
            }
        ),
        json.dumps(
            {
                "version": 1,
                "job_id": "j",
                "stamp": "20260101T000000Z",
                "files": [{"path": "a", "size": 1, "sha256": "xyz"}],
            }
        ),
        json.dumps({"version": 9, "job_id": "j", "stamp": "20260101T000000Z", "files": []}),
    ],
)
def test_malformed_manifests_raise_manifest_error(text: str) -> None:
    with pytest.raises(mf.ManifestError):
        mf.Manifest.from_json(text)


def test_missing_manifest_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(mf.ManifestError, match="does not exist"):
        mf.read_manifest(tmp_path / "metadata.json")


def test_symlink_leaving_the_run_dir_is_refused(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("outside") / "secret"
    outside.write_text("secret")
    (run_dir / "logs").mkdir()
    (run_dir / "logs" / "link").symlink_to(outside)
    with pytest.raises(mf.ManifestError, match="outside the run directory"):
        mf.build_manifest(run_dir, "job1", "20260101T000000Z")


def test_sha256_file_streams_in_chunks(tmp_path: Path) -> None:
    data = os.urandom(3 * mf.CHUNK_SIZE + 17)
    path = tmp_path / "big"
    path.write_bytes(data)
    assert mf.sha256_file(path) == hashlib.sha256(data).hexdigest()


def _manifest_text(entry: dict | None = None, **top: object) -> str:
    """A manifest of job ``j`` with one file (``entry`` over a plain one) and ``top`` over its other fields,
    spelled as raw JSON so values Python would not write (``1e400``, ``NaN``) can be given verbatim."""
    file = {"path": "mesh/m.obj", "size": 1, "sha256": "0" * 64, **(entry or {})}
    body = {"version": 1, "job_id": "j", "stamp": "20260101T000000Z", "files": [file], **top}
    return json.dumps(body).replace('"@1e400"', "1e400").replace('"@NaN"', "NaN").replace('"@-Infinity"', "-Infinity")


#: what a writer holding the worker's keys can put in a manifest that the parser used to take (or crash on):
#: each must come out as a ManifestError, so every reader (archive, scrub, API, backup, hygiene) refuses it alike
ODD_MANIFESTS = {
    "level 1e400": _manifest_text({"role": "lod", "level": "@1e400"}),
    "level a boolean": _manifest_text({"role": "lod", "level": True}),
    "level a fraction": _manifest_text({"role": "lod", "level": 1.5}),
    "level negative": _manifest_text({"role": "lod", "level": -1}),
    "size a string": _manifest_text({"size": "1"}),
    "size negative": _manifest_text({"size": -1}),
    "size 1e400": _manifest_text({"size": "@1e400"}),
    "figures a list of pairs": _manifest_text({"figures": [["faces", 1]]}),
    "figures NaN": _manifest_text({"figures": {"faces": "@NaN"}}),
    "figures 1e400 deep down": _manifest_text({"figures": {"a": [{"b": "@1e400"}]}}),
    "figures -Infinity": _manifest_text({"figures": {"hausdorff": "@-Infinity"}}),
    "tile row not a number": _manifest_text(
        {
            "path": "textures/tiles/0/0_0.jpg",
            "role": "tile",
            "level": 0,
            "figures": {"row": "x", "col": 0, "width": 1, "height": 1},
        }
    ),
    "tile row without its size": _manifest_text(
        {"path": "textures/tiles/0/0_0.jpg", "role": "tile", "level": 0, "figures": {"row": 0, "col": 0}}
    ),
    "tile row negative": _manifest_text(
        {
            "path": "textures/tiles/0/0_0.jpg",
            "role": "tile",
            "level": 0,
            "figures": {"row": -1, "col": 0, "width": 1, "height": 1},
        }
    ),
    "etag not a string": _manifest_text({"etag": {"x": 1}}),
    "dropped prefix ../": _manifest_text(dropped=[{"prefix": "../logs/", "files": 1, "bytes": 1}]),
    "dropped bytes a string": _manifest_text(dropped=[{"prefix": "temp/", "files": 1, "bytes": "1"}]),
    "preservation removes everything": _manifest_text(preservation={"remove_after_archive": [""]}),
    "preservation drops results": _manifest_text(preservation={"drop": ["mesh/"]}),
    "statistics NaN": _manifest_text(statistics={"faces": "@NaN"}),
    "version a boolean": _manifest_text(version=True),
    "a path listed twice": json.dumps(
        {
            "version": 1,
            "job_id": "j",
            "stamp": "20260101T000000Z",
            "files": [{"path": "a", "size": 1, "sha256": "0" * 64}, {"path": "a", "size": 2, "sha256": "1" * 64}],
        }
    ),
}


@pytest.mark.parametrize("text", ODD_MANIFESTS.values(), ids=ODD_MANIFESTS.keys())
def test_odd_values_in_a_manifest_are_manifest_errors_for_every_reader(text: str) -> None:
    """Issue 28 (8): odd figures, a level of 1e400, a bad tile row... were taken as they came (or raised
    OverflowError), and each reader then failed its own way: the archive sweep stopped, the API answered 500."""
    with pytest.raises(mf.ManifestError):
        mf.Manifest.from_json(text)


def test_the_values_publish_writes_still_read_back() -> None:
    """The checks above refuse nothing a publish writes: variants with fractional figures, tiles, a tile index,
    dropped prefixes after archive, a preservation policy."""
    text = json.dumps(
        {
            "version": 1,
            "job_id": "j",
            "stamp": "20260101T000000Z",
            "files": [
                {"path": "mesh/lod1/m.obj", "size": 3, "sha256": "0" * 64, "etag": '"abc"', "role": "lod",
                 "source": "mesh/m.obj", "level": 1, "figures": {"faces": 10, "hausdorff": 0.0123, "ratio": 0.25}},
                {"path": "textures/tiles/1/0_1.jpg", "size": 3, "sha256": "1" * 64, "role": "tile", "level": 1,
                 "figures": {"row": 0, "col": 1, "width": 512, "height": 300}},
                {"path": "textures/tiles/index.json", "size": 3, "sha256": "2" * 64, "role": "tile", "level": 0,
                 "figures": {"tiles": 3, "levels": 2, "index": True}},
            ],
            "statistics": {"files": 3, "right_size": {"mesh": {"seconds": 1.5}}},
            "dropped": [
                {"prefix": "temp/", "files": 1, "bytes": 10},
                {"prefix": "logs/", "files": 1, "bytes": 3, "after_archive": True, "archive_key": "archive/j/"},
            ],
            "preservation": {"keep": [], "drop": ["temp/"], "remove_after_archive": ["logs/"]},
        }
    )  # fmt: skip
    parsed = mf.Manifest.from_json(text)
    assert [e.level for e in parsed.files] == [1, 1, 0] and parsed.files[0].figures == {
        "faces": 10,
        "hausdorff": 0.0123,
        "ratio": 0.25,
    }
    assert mf.Manifest.from_json(parsed.to_json()).to_dict() == parsed.to_dict()


@pytest.mark.parametrize(
    "variant",
    [
        {"level": "@1e400"},
        {"level": True},
        {"role": "bogus"},
        {"figures": {"faces": "@NaN"}},
        {"figures": [["faces", 1]]},
    ],
    ids=["level 1e400", "level a boolean", "unknown role", "figures NaN", "figures a list of pairs"],
)
def test_odd_values_in_a_rightsize_record_are_manifest_errors(variant: dict) -> None:
    """The same checks for right-sizing's record: a variant publish would put in a manifest no reader takes
    (an unknown role) or a level that overflows is refused when the record is read."""
    from e2e3d_provider.core.variants import RightSizeRecord

    entry = {"path": "mesh/lod1/m.obj", "role": "lod", "source": "mesh/m.obj", "level": 1, **variant}
    text = json.dumps({"version": 1, "variants": [entry]})
    text = text.replace('"@1e400"', "1e400").replace('"@NaN"', "NaN")
    with pytest.raises(mf.ManifestError):
        RightSizeRecord.from_json(text)


def test_a_rightsize_record_that_is_a_link_is_never_read(
    run_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Issue 28 (6): publish read rightsize.json through a link to a file elsewhere (and copied its figures into
    the manifest); now the record is opened without following a link."""
    from e2e3d_provider.core.variants import RightSizeRecord
    from e2e3d_provider.exceptions import UnsafePathError

    elsewhere = tmp_path_factory.mktemp("elsewhere") / "record.json"
    elsewhere.write_text(RightSizeRecord(statistics={"from": "elsewhere"}).to_json())
    elsewhere.chmod(0o600)
    (run_dir / "rightsize.json").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        RightSizeRecord.read(run_dir)
