"""A file in a variant folder (``mesh/lod1/``, ``textures/web/``, ``pointcloud/tiles/`` ...) with no
``rightsize.json`` at all, so no record of right-sizing, makes publish refuse: from a run directory and
from a hand-off. Nothing of such a run becomes readable."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e3d_provider.core.layout import VARIANTS_NAME
from e2e3d_provider.exceptions import ManifestError
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.results.handoff import hand_off
from e2e3d_provider.lifecycle.results.publish import publish_handoff, publish_run
from tests.helpers import write_files

STAMP = "20260405T000000Z"
ORIGINALS = {"mesh/reconstructed_mesh.obj": b"v 0 0 0\n" * 10, "textures/texture.png": b"png"}


@pytest.mark.parametrize("stray", ["mesh/lod1/reconstructed_mesh.obj", "textures/web/texture.webp"])
def test_a_variant_without_any_rightsize_record_makes_publish_refuse(
    storage: StorageHook, tmp_path: Path, unique_id: str, stray: str
) -> None:
    run = tmp_path / "run"
    write_files(run, {**ORIGINALS, stray: b"half of a right-sizing"})
    assert not (run / VARIANTS_NAME).exists()
    with pytest.raises(ManifestError, match="not recorded by right-sizing"):
        publish_run(storage, run, unique_id, STAMP, "output")
    assert storage.list_keys("output", f"{unique_id}/") == []  # refused before anything was sent
    assert not (run / "SUCCESS").exists()

    hand_off(storage, run, unique_id, STAMP)  # the same run handed on to another host, then published
    with pytest.raises(ManifestError, match="not recorded by right-sizing"):
        publish_handoff(storage, unique_id, STAMP, "output")
    assert not storage.exists("output", f"{unique_id}/SUCCESS")
    assert not storage.exists("output", f"{unique_id}/metadata.json")

    (run / stray).unlink()  # without the stray variant the run publishes
    assert publish_run(storage, run, unique_id, STAMP, "output").files == len(ORIGINALS)
