"""Hand-off promises, on the real server: the write-back refuses to seal a hand-off over an object that was
replaced (by one of the same size) after its early upload, and a run directory rebuilt from a hand-off holds
exactly the files ``handoff.json`` names."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from e2e3d_provider.core.layout import HANDOFF_NAME, RunLayout, work_prefix
from e2e3d_provider.exceptions import TransferError
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.results.handoff import hand_off, read_handoff
from e2e3d_provider.lifecycle.worker.rebuild import local_run_dir, materialize
from e2e3d_provider.lifecycle.worker.write_back import WriteBack
from tests.helpers import write_files

STAMP = "20260404T000000Z"


def files_below(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_an_object_replaced_at_the_same_size_before_finish_is_refused(
    storage: StorageHook, tmp_path: Path, unique_id: str
) -> None:
    run = tmp_path / "run"
    prefix = work_prefix(unique_id, STAMP)
    mesh, texture = os.urandom(200_000), os.urandom(50_000)
    writer = WriteBack(storage, run, unique_id, STAMP, settle=0.2, interval=0.1)
    with writer:
        write_files(run, {"mesh/m.obj": mesh})
        deadline = time.monotonic() + 30
        while writer.stats.early_files < 1:  # the write-back has sent it and noted what the server holds
            assert time.monotonic() < deadline, "the write-back never sent the mesh"
            time.sleep(0.05)
        write_files(run, {"textures/t.png": texture})
    other = bytearray(mesh)
    other[1234] ^= 0xFF
    storage.put_bytes("output", prefix + "mesh/m.obj", bytes(other))  # another writer, same size
    with pytest.raises(TransferError, match=r"not what was sent.*mesh/m\.obj"):
        writer.finish()
    assert not storage.exists("output", prefix + HANDOFF_NAME)
    assert read_handoff(storage, unique_id, STAMP) is None


def test_a_file_rewritten_at_the_same_size_after_its_early_upload_is_sent_again(
    storage: StorageHook, tmp_path: Path, unique_id: str
) -> None:
    run = tmp_path / "run"
    draft = os.urandom(100_000)
    final = bytes(b ^ 0x5A for b in draft)  # the same size, other bytes
    writer = WriteBack(storage, run, unique_id, STAMP, settle=0.2, interval=0.1)
    with writer:
        write_files(run, {"logs/run.log": draft})
        deadline = time.monotonic() + 30
        while writer.stats.early_files < 1:
            assert time.monotonic() < deadline, "the write-back never sent the draft"
            time.sleep(0.05)
        write_files(run, {"logs/run.log": final})
    writer.finish()
    (entry,) = read_handoff(storage, unique_id, STAMP).files
    assert entry.sha256 == hashlib.sha256(final).hexdigest()
    assert storage.get_bytes("output", work_prefix(unique_id, STAMP) + "logs/run.log") == final


def test_a_run_rebuilt_from_its_hand_off_holds_exactly_the_files_it_names(
    storage: StorageHook, tmp_path: Path, unique_id: str
) -> None:
    first = {"mesh/m.obj": b"v 1\n", "logs/old.log": b"first run\n", "textures/t.png": b"png"}
    second = {"mesh/m.obj": b"v 2\n", "textures/t.png": b"png", "pointcloud/p.ply": b"ply"}
    write_files(tmp_path / "first", first)
    hand_off(storage, tmp_path / "first", unique_id, STAMP)
    here = tmp_path / "worker" / "run"
    materialize(storage, unique_id, STAMP, here)
    assert files_below(here) == first

    write_files(tmp_path / "second", second)  # the task ran again: a file less, a file more
    hand_off(storage, tmp_path / "second", unique_id, STAMP)
    write_files(here, {"mesh/lod1/stray.obj": b"v 0\n", "notes.txt": b"left by hand"})  # never handed off
    moved = materialize(storage, unique_id, STAMP, here)
    assert moved is not None and moved.removed_files == 3
    assert files_below(here) == second

    # the same through local_run_dir on the host that staged the run: the hand-off is the truth
    staged = RunLayout(tmp_path / "staging", unique_id, STAMP).run_dir
    write_files(staged, {**first, "temp/scratch.bin": b"x"})
    local = local_run_dir(storage, unique_id, STAMP, tmp_path / "staging", str(staged), None)
    assert local.run_dir == staged and files_below(staged) == second
