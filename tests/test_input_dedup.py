"""Input deduplication against the real S3 server: content-addressed images, dataset manifests, the
content-addressed read-through cache on a worker, the migration of plain-object datasets, the API's
upload-and-commit flow, and the bounded cache."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from e2e3d_provider.core.layout import BLOB_AREA, blob_key, cache_blob_path, input_prefix
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.inputs.datasets import adopt_loose, dataset_view, read_dataset
from e2e3d_provider.lifecycle.inputs.ingest import ingest
from e2e3d_provider.lifecycle.inputs.readiness import input_state
from e2e3d_provider.lifecycle.worker.input_cache import reading, stage_dataset, trim
from e2e3d_provider.lifecycle.worker.stage_in import stage_in
from tests.helpers import make_dataset


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_datasets_sharing_images_store_each_once_and_a_warm_worker_fetches_only_new_ones(
    storage: StorageHook, tmp_path: Path, unique_id: str
) -> None:
    # three datasets of 10 images, each sharing 8 with the first: 14 distinct images
    seeds = {"a": list(range(10)), "b": [*range(8), 100, 101], "c": [*range(8), 200, 201]}
    seeds = {k: [s + hash(unique_id) % 10_000_000 * 1000 for s in v] for k, v in seeds.items()}
    contents = {k: make_dataset(tmp_path / "src" / k, v) for k, v in seeds.items()}
    names = {k: f"{unique_id}-{k}" for k in seeds}
    sent = {k: ingest(storage, tmp_path / "src" / k, names[k]) for k in seeds}
    assert (sent["a"].files, sent["b"].files, sent["c"].files) == (10, 2, 2)
    assert (sent["b"].skipped_files, sent["c"].skipped_files) == (8, 8)
    for k in seeds:  # below the dataset's prefix there is only its manifest; the images are content-addressed
        assert storage.list_keys("input", names[k]) == [f"{names[k]}/dataset.json"]
        manifest = read_dataset(storage, names[k])
        assert {i.path: i.sha256 for i in manifest.images} == {n: sha(d) for n, d in contents[k].items()}
        for data in contents[k].values():
            assert storage.get_bytes("input", blob_key(sha(data))) == data
    unique = {sha(d): len(d) for files in contents.values() for d in files.values()}
    assert len(unique) == 14
    # the readiness check counts a manifest's images
    state = input_state(storage, "input", input_prefix(names["b"]), ["*.png"], 10, 0)
    assert state.ready and state.count == 10

    root = tmp_path / "worker"
    first = stage_in(storage, root, names["a"], names["a"], "20260101T000000Z").transfers[0]
    assert (first.files, first.bytes) == (10, sum(len(d) for d in contents["a"].values()))
    second = stage_dataset(storage, root, names["b"])
    seen_on_a = {sha(x) for x in contents["a"].values()}
    new = [d for d in contents["b"].values() if sha(d) not in seen_on_a]
    assert (second.transfer.files, second.transfer.bytes) == (2, sum(len(d) for d in new))
    assert local_files(second.local_dir) == contents["b"]
    # the staged files are the cache's entries (hard links), not copies
    for name, data in contents["b"].items():
        assert os.path.samefile(second.local_dir / name, cache_blob_path(root, sha(data)))
    again = stage_dataset(storage, root, names["b"])
    assert again.transfer.files == 0 and again.transfer.skipped_files == 10


def test_a_cached_image_written_through_its_link_is_fetched_again(
    storage: StorageHook, tmp_path: Path, unique_id: str
) -> None:
    files = make_dataset(tmp_path / "src", [1, 2, 3])
    ingest(storage, tmp_path / "src", unique_id)
    root = tmp_path / "worker"
    staged = stage_dataset(storage, root, unique_id)
    victim = staged.local_dir / "img_0001.png"
    victim.chmod(0o644)
    with open(victim, "r+b") as handle:  # a careless job writes into its input
        handle.write(b"garbage!")
    restaged = stage_dataset(storage, root, unique_id)
    assert restaged.transfer.files == 1
    assert local_files(restaged.local_dir) == files
    assert cache_blob_path(root, sha(files["img_0001.png"])).read_bytes() == files["img_0001.png"]


def test_a_plain_object_dataset_keeps_working_and_migrates_to_content_addressing(
    storage: StorageHook, tmp_path: Path, unique_id: str
) -> None:
    files = make_dataset(tmp_path / "src", [11, 12, 13, 14])
    storage.upload_dir(tmp_path / "src", "input", input_prefix(unique_id))  # the layout before this change
    root = tmp_path / "worker"
    legacy = stage_dataset(storage, root, unique_id)
    assert local_files(legacy.local_dir) == files and legacy.transfer.files == 4
    assert input_state(storage, "input", input_prefix(unique_id), ["*.png"], 4, 0).ready

    done = adopt_loose(storage, unique_id)  # what `e2e3d migrate-inputs` runs for each dataset
    assert (done.adopted, len(done.removed)) == (4, 4)
    assert storage.list_keys("input", unique_id) == [f"{unique_id}/dataset.json"]
    view = dataset_view(storage, unique_id)
    assert not view.loose and {i.path for i in view.images} == set(files)
    migrated = stage_dataset(storage, root, unique_id)
    assert local_files(migrated.local_dir) == files
    assert migrated.transfer.files == 0  # the worker's cache holds the same content already
    assert adopt_loose(storage, unique_id).adopted == 0  # running it again changes nothing


def test_migrate_inputs_cli(storage: StorageHook, connections: dict, tmp_path: Path, unique_id: str) -> None:
    import subprocess
    import sys

    make_dataset(tmp_path / "src", [21, 22])
    storage.upload_dir(tmp_path / "src", "input", input_prefix(unique_id))
    e2e3d = str(Path(sys.executable).parent / "e2e3d")
    out = subprocess.run(
        [e2e3d, "migrate-inputs", "--dataset", unique_id], capture_output=True, text=True, check=True
    ).stdout
    assert f"dataset {unique_id}: 2 loose images adopted" in out
    assert storage.list_keys("input", unique_id) == [f"{unique_id}/dataset.json"]


def test_two_jobs_staging_one_dataset_on_one_worker_at_once_both_get_it_whole(
    storage: StorageHook, tmp_path: Path, unique_id: str
) -> None:
    files = make_dataset(tmp_path / "src", list(range(30, 50)))
    ingest(storage, tmp_path / "src", unique_id)
    root = tmp_path / "worker"
    seen: list[dict[str, bytes]] = []
    errors: list[BaseException] = []

    def job() -> None:
        try:
            staged = stage_dataset(storage, root, unique_id)
            with reading(staged.local_dir):
                seen.append(local_files(staged.local_dir))
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=job) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and seen == [files] * 3


def test_the_cache_is_bounded_and_never_trims_a_dataset_being_read(
    storage: StorageHook, tmp_path: Path, unique_id: str
) -> None:
    root = tmp_path / "worker"
    sizes = {}
    for k, seeds in {"x": [61, 62, 63], "y": [71, 72, 73]}.items():
        files = make_dataset(tmp_path / "src" / k, seeds)
        ingest(storage, tmp_path / "src" / k, f"{unique_id}-{k}")
        sizes[k] = sum(len(d) for d in files.values())
    x = stage_dataset(storage, root, f"{unique_id}-x")
    old = 1_000_000.0
    os.utime(x.local_dir.parent / f".{x.local_dir.name}.lock", (old, old))  # x was last used long ago
    y = stage_dataset(storage, root, f"{unique_id}-y")
    later = time.time() + 3600  # an hour on: past the grace a just-staged dataset or image gets
    with reading(y.local_dir):  # a task reads y: nothing may remove it, whatever the bound
        result = trim(root, max_bytes=0, max_age_hours=24, now=later)
    assert result.removed_datasets == [x.local_dir.name] and y.local_dir.name in result.busy
    assert not x.local_dir.exists() and local_files(y.local_dir)
    assert result.freed_bytes == sizes["x"] and result.held_bytes == sizes["y"]
    after = trim(root, max_bytes=0, max_age_hours=24, now=later)  # y is idle now: the size bound takes it
    assert after.removed_datasets == [y.local_dir.name] and after.held_bytes == 0
    assert not list((root / "cache" / "sha256").glob("*/*"))
    again = stage_dataset(storage, root, f"{unique_id}-y")  # and it comes back from the bucket
    assert again.transfer.files == 3


def test_input_bucket_holds_no_blob_twice(storage: StorageHook) -> None:
    blobs = storage.list_objects("input", BLOB_AREA + "/")
    assert all(o.key == blob_key(o.key.rsplit("/", 1)[-1]) for o in blobs)
    assert len({o.key for o in blobs}) == len(blobs)


@pytest.mark.parametrize("bad", ["../x", "", "X" * 70])
def test_blob_keys_refuse_what_is_not_a_sha256(bad: str) -> None:
    from e2e3d_provider.exceptions import InvalidNameError

    with pytest.raises(InvalidNameError, match="sha256"):
        blob_key(bad)
