"""Downloads and single-PUT uploads, on the real server: a local copy is kept only when its own bytes hash
to the manifest's sha256 (its size alone proves nothing); nothing is ever under a download's final name
until its bytes are verified, not while it runs and not after the process is killed part-way; and an upload
in one PUT whose answer's ETag is not the MD5 of the bytes hashed is refused.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from e2e3d_provider.core.transfer import PARTIAL_SUFFIX
from e2e3d_provider.exceptions import ChecksumMismatchError, TransferError
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.results.handoff import hand_off
from e2e3d_provider.lifecycle.results.publish import publish_run
from e2e3d_provider.lifecycle.results.published import fetch_published
from e2e3d_provider.lifecycle.worker.rebuild import materialize
from tests.helpers import write_files

STAMP = "20260402T000000Z"
MiB = 1024 * 1024
FILES = {
    "mesh/reconstructed_mesh.obj": b"v 1 2 3\n" * 300,
    "textures/texture.png": b"\x89PNG" + os.urandom(5000),
    "pointcloud/pointcloud.ply": b"ply\n" + os.urandom(7000),
}


def flip_one_byte(path: Path, at: int = 100) -> None:
    """Other bytes, same size (and a new mtime): what a disk error or a careless writer leaves."""
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_local_copy_of_the_right_size_but_other_bytes_is_fetched_again_against_the_manifest(
    storage: StorageHook, bucket: str, tmp_path: Path, unique_id: str
) -> None:
    write_files(tmp_path / "run", FILES)
    publish_run(storage, tmp_path / "run", unique_id, STAMP, bucket)
    local = tmp_path / "reader"
    assert fetch_published(storage, unique_id, local, bucket=bucket).files == len(FILES)
    victim = local / "pointcloud/pointcloud.ply"
    flip_one_byte(victim)
    again = fetch_published(storage, unique_id, local, bucket=bucket)
    assert (again.files, again.skipped_files) == (1, len(FILES) - 1)
    assert victim.read_bytes() == FILES["pointcloud/pointcloud.ply"]

    # one object at the hook level: the manifest's sha256 and size, not the local file's size, decide
    key, dest = f"{unique_id}/textures/texture.png", tmp_path / "one" / "texture.png"
    want = hashlib.sha256(FILES["textures/texture.png"]).hexdigest()
    size = len(FILES["textures/texture.png"])
    assert storage.download_file(bucket, key, dest, sha256=want, size=size)
    assert not storage.download_file(bucket, key, dest, sha256=want, size=size)  # the right bytes: kept
    flip_one_byte(dest)
    assert storage.download_file(bucket, key, dest, sha256=want, size=size)  # same size, other bytes: fetched
    assert dest.read_bytes() == FILES["textures/texture.png"]


def test_a_run_rebuilt_from_its_hand_off_replaces_a_same_size_file_with_other_bytes(
    storage: StorageHook, tmp_path: Path, unique_id: str
) -> None:
    write_files(tmp_path / "run", FILES)
    hand_off(storage, tmp_path / "run", unique_id, STAMP)
    elsewhere = tmp_path / "other-host"
    materialize(storage, unique_id, STAMP, elsewhere)
    flip_one_byte(elsewhere / "mesh/reconstructed_mesh.obj")
    moved = materialize(storage, unique_id, STAMP, elsewhere)
    assert moved is not None and (moved.files, moved.skipped_files) == (1, len(FILES) - 1)
    assert (elsewhere / "mesh/reconstructed_mesh.obj").read_bytes() == FILES["mesh/reconstructed_mesh.obj"]


#: a download in a process of its own that SIGKILLs itself once bytes of the object are written, before they
#: have a name: a small object's in its unnamed file (at the link), or in the named temporary file where
#: unnamed files cannot be made (``named``); a large one's in its partial file once 8 MiB are in
KILLED_DOWNLOAD = textwrap.dedent(
    """
    import os, signal, sys
    from e2e3d_provider.core import object_io
    from e2e3d_provider.hooks.storage import StorageHook

    bucket, key, dest, sha256, size, way = sys.argv[1:]
    real_write_new, real_update = object_io.write_new, object_io._BodyHashes.update
    landed = [0]

    def link(*args, **kwargs):  # the unnamed file holds the bytes; the process dies before it is linked
        os.kill(os.getpid(), signal.SIGKILL)

    def write_new(path, data):  # the named temporary file holds the bytes; the process dies before the rename
        real_write_new(path, data)
        os.kill(os.getpid(), signal.SIGKILL)

    def update(self, data):  # a large one: the hash follows the bytes written; die once 8 MiB are in
        real_update(self, data)
        landed[0] += len(data)
        if landed[0] >= 8 * 1024 * 1024:
            os.kill(os.getpid(), signal.SIGKILL)

    if way == "named":
        object_io._link_unnamed = lambda dest, data: False
    os.link, object_io.write_new, object_io._BodyHashes.update = link, write_new, update
    StorageHook().download_file(bucket, key, dest, sha256=sha256 or None, size=int(size) if size else None)
    print("the download finished: the kill point was never reached")
    """
)


@pytest.mark.parametrize(
    ("size", "with_manifest", "way"),
    [
        (300_000, True, "unnamed"),
        (300_000, False, "unnamed"),
        (300_000, True, "named"),
        (24 * MiB, False, "partial"),
    ],
)
def test_a_download_killed_part_way_leaves_nothing_under_the_final_name(
    storage: StorageHook, bucket: str, tmp_path: Path, unique_id: str, size: int, with_manifest: bool, way: str
) -> None:
    data = os.urandom(size)
    (tmp_path / "src").write_bytes(data)
    key = f"{unique_id}/payload.bin"
    storage.upload_file(tmp_path / "src", bucket, key)
    dest = tmp_path / "dest" / "payload.bin"
    sha = hashlib.sha256(data).hexdigest() if with_manifest else ""
    killed = subprocess.run(
        [
            sys.executable,
            "-P",
            "-c",
            KILLED_DOWNLOAD,
            bucket,
            key,
            str(dest),
            sha,
            str(size) if with_manifest else "",
            way,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr[-3000:]
    assert not dest.exists(), "a killed download left a file under its final name"
    left = list(dest.parent.iterdir())
    if way == "unnamed":  # its bytes were in a file with no name: nothing at all is left
        assert left == []
    else:  # the kill came while bytes were landing in the named temporary file
        assert len(left) == 1 and left[0].name.endswith(PARTIAL_SUFFIX) and left[0].stat().st_size > 0
    # the next download is not fooled by what the killed one left
    assert storage.download_file(bucket, key, dest, sha256=sha or None, size=size if with_manifest else None)
    assert dest.read_bytes() == data


def test_a_small_download_replaces_a_file_already_under_its_name_at_once(
    storage: StorageHook, bucket: str, tmp_path: Path, unique_id: str
) -> None:
    """A damaged local copy is replaced by a rename over it (an unnamed file cannot be linked over a name):
    the verified bytes land, and no temporary file is left."""
    data = os.urandom(5000)
    (tmp_path / "src").write_bytes(data)
    storage.upload_file(tmp_path / "src", bucket, f"{unique_id}/a.bin")
    dest = tmp_path / "dest" / "a.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"damaged copy")
    assert storage.download_file(bucket, f"{unique_id}/a.bin", dest)
    assert dest.read_bytes() == data and [p.name for p in dest.parent.iterdir()] == ["a.bin"]


@pytest.fixture
def corrupted_in_flight(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every single-PUT upload sends one byte other than the bytes that were hashed (a fault between the
    hash and the wire); the real server stores what it got and answers with its MD5."""
    import obstore

    real = obstore.put_async
    corrupted: list[str] = []

    async def put_async(store, path, data, *args, **kwargs):
        if isinstance(data, bytes | bytearray | memoryview) and not kwargs.get("use_multipart", True):
            changed = bytearray(data)
            changed[len(changed) // 2] ^= 0xFF
            data = bytes(changed)
            corrupted.append(path)
        return await real(store, path, data, *args, **kwargs)

    monkeypatch.setattr(obstore, "put_async", put_async)
    return corrupted


def test_a_single_put_answered_with_another_etag_is_refused(
    storage: StorageHook, bucket: str, tmp_path: Path, unique_id: str, corrupted_in_flight: list[str]
) -> None:
    write_files(tmp_path / "run", FILES)
    with pytest.raises(ChecksumMismatchError, match="stored other bytes than were sent"):
        storage.upload_file(tmp_path / "run/mesh/reconstructed_mesh.obj", bucket, f"{unique_id}/one.obj")
    assert corrupted_in_flight == [f"{unique_id}/one.obj"]  # tried once: a retry cannot cure it
    with pytest.raises(TransferError) as several:
        storage.upload_dir(tmp_path / "run", bucket, f"{unique_id}/dir")
    assert len(several.value.failures) == len(FILES)
    assert all(isinstance(err, ChecksumMismatchError) for err in several.value.failures.values())
    with pytest.raises(TransferError, match="stored other bytes than were sent"):
        publish_run(storage, tmp_path / "run", unique_id, STAMP, bucket)
    assert not storage.exists(bucket, f"{unique_id}/SUCCESS") and not (tmp_path / "run/SUCCESS").exists()
    assert not storage.exists(bucket, f"{unique_id}/metadata.json")


def test_a_retried_small_download_replaces_its_partial_file_and_never_writes_through_a_link(tmp_path: Path) -> None:
    """A small download no longer removes its temporary name before every attempt (a system call per
    file): the write itself replaces what an earlier attempt left there, a link planted under that name
    included, whose target is left as it was."""
    from e2e3d_provider.core.object_io import write_new

    partial = tmp_path / f".a.bin.1.f{PARTIAL_SUFFIX}"
    write_new(partial, b"first attempt, cut short")
    write_new(partial, b"second")
    assert partial.read_bytes() == b"second"
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    partial.unlink()
    partial.symlink_to(victim)
    write_new(partial, memoryview(b"third"))
    assert not partial.is_symlink() and partial.read_bytes() == b"third"
    assert victim.read_bytes() == b"keep"
