"""Manifests: build, write, read and verify against a run directory."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from e2e3d_provider.core import manifest as mf
from tests.conftest import write_files

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
