"""Re-ingesting a dataset whose image changed under the same name records the new image: the manifest names
its new sha256, the new content is stored, and a worker that staged the old one gets the new one."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image

from e2e3d_provider.core.layout import blob_key
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.inputs.datasets import read_dataset
from e2e3d_provider.lifecycle.inputs.ingest import ingest
from e2e3d_provider.lifecycle.worker.input_cache import stage_dataset


def png(seed: str, size: int = 32) -> bytes:
    pixels = hashlib.sha256(seed.encode()).digest() * (size * size * 3 // 32 + 1)
    out = io.BytesIO()
    Image.frombytes("RGB", (size, size), pixels[: size * size * 3]).save(out, "PNG")
    return out.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_reingesting_a_changed_image_under_the_same_name_records_its_new_sha256(
    storage: StorageHook, tmp_path: Path, unique_id: str
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    first = {"view_1.png": png(unique_id + "1"), "view_2.png": png(unique_id + "2")}
    for name, data in first.items():
        (folder / name).write_bytes(data)
    ingest(storage, folder, unique_id)
    worker = tmp_path / "worker"
    staged = stage_dataset(storage, worker, unique_id)
    assert (staged.local_dir / "view_1.png").read_bytes() == first["view_1.png"]

    changed = png(unique_id + "1, retaken")
    (folder / "view_1.png").write_bytes(changed)  # the same name, a new picture
    again = ingest(storage, folder, unique_id)
    assert (again.files, again.skipped_files) == (1, 1)  # only the new picture moved

    images = {image.path: image for image in read_dataset(storage, unique_id).images}
    assert set(images) == {"view_1.png", "view_2.png"}
    assert (images["view_1.png"].sha256, images["view_1.png"].size) == (sha(changed), len(changed))
    assert images["view_2.png"].sha256 == sha(first["view_2.png"])
    assert storage.get_bytes("input", blob_key(sha(changed))) == changed

    restaged = stage_dataset(storage, worker, unique_id)  # the worker that held the old picture
    assert restaged.transfer.files == 1
    assert (restaged.local_dir / "view_1.png").read_bytes() == changed
    assert (restaged.local_dir / "view_2.png").read_bytes() == first["view_2.png"]
