"""Partial files never outlive their transfer: a download killed with SIGKILL leaves its ``.e2e3d-partial``
in the worker's content-addressed cache, and the host sweep removes it once its grace period is over and
its process is gone, while the partial of a transfer still running (here: stopped with SIGSTOP) is left
alone, counted by the cache trim, and becomes its verified file when that transfer goes on."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e3d_provider.core.layout import BLOB_AREA, blob_key, cache_blob_path
from e2e3d_provider.core.transfer import PARTIAL_SUFFIX
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.worker.host_sweep import ScratchBounds, sweep_host
from e2e3d_provider.lifecycle.worker.input_cache import blobs_dir
from e2e3d_provider.lifecycle.worker.partials import sweep_partials

MiB = 1024 * 1024
SIZE = 192 * MiB  # large enough that a download is caught mid-way (it streams into its partial file)

#: what a worker's staging does for one image the cache lacks (lifecycle/input_cache.stage_dataset)
DOWNLOAD = """
import sys
from pathlib import Path
from e2e3d_provider.core.layout import BLOB_AREA
from e2e3d_provider.hooks.storage import StorageHook
bucket, root, sha, size = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
StorageHook().download_prefix(
    bucket, BLOB_AREA + "/", root / "cache" / "sha256", expected={f"{sha[:2]}/{sha}": (size, sha)}
)
"""


def partials_of(root: Path, pid: int) -> list[Path]:
    return [p for p in blobs_dir(root).rglob(f"*{PARTIAL_SUFFIX}") if f".{pid}." in p.name]


def start_download(bucket: str, root: Path, sha: str) -> tuple[subprocess.Popen, Path]:
    """A process downloading the object into ``root``'s cache, caught once its partial file has bytes."""
    proc = subprocess.Popen(
        [sys.executable, "-P", "-c", DOWNLOAD, bucket, str(root), sha, str(SIZE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = partials_of(root, proc.pid)
        if found and found[0].exists() and found[0].stat().st_size > 0:
            return proc, found[0]
        assert proc.poll() is None, f"the download ended before it was caught:\n{proc.stdout.read().decode()[-3000:]}"
        time.sleep(0.002)
    proc.kill()
    raise AssertionError("no partial file appeared within 120 s")


def wait_stopped(pid: int) -> None:
    """Wait until every thread of ``pid`` is stopped (a signal stops each thread once its system call ends)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = [
            (task / "stat").read_text().rsplit(")", 1)[-1].split()[0] for task in Path(f"/proc/{pid}/task").iterdir()
        ]
        if all(state in "Tt" for state in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop within 30 s")


@pytest.fixture
def big_blob(storage: StorageHook, bucket: str, tmp_path: Path) -> str:
    """A large object stored under its sha256, as input images are."""
    source = tmp_path / "big.bin"
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    with open(source, "wb") as out:
        for i in range(SIZE // MiB):
            chunk = block[i:] + block[:i]
            out.write(chunk)
            digest.update(chunk)
    sha = digest.hexdigest()
    storage.upload_file(source, bucket, blob_key(sha))
    source.unlink()
    return sha


def test_a_killed_download_leaves_a_partial_that_the_sweep_removes_and_a_live_one_is_kept(
    storage: StorageHook, bucket: str, big_blob: str, tmp_path: Path
) -> None:
    sha, root = big_blob, tmp_path / "worker"
    assert BLOB_AREA in blob_key(sha)

    killed, orphan = start_download(bucket, root, sha)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(30)
    # a ranged download allocates its file whole at once (fallocate) and fills it at the ranges' offsets:
    # its size says nothing of its progress, but a download that ended would have renamed it
    assert orphan.exists(), "the kill came after the download ended"
    assert orphan.stat().st_blocks * 512 >= SIZE, "the partial holds the object's room from the first GET"
    assert not cache_blob_path(root, sha).exists()

    live, held = start_download(bucket, root, sha)
    try:
        os.kill(live.pid, signal.SIGSTOP)  # a transfer still under way (a slow link): its process runs
        wait_stopped(live.pid)
        held_bytes, orphan_bytes = held.stat().st_size, orphan.stat().st_size

        # within the grace period even the orphan stays: its process may only just have been killed
        assert sweep_partials(root, 900.0).removed == 0 and orphan.exists()

        done = sweep_host(root, ScratchBounds(partial_grace_seconds=0), force=True)
        assert done is not None
        assert done["partials"]["removed"] == 1 and done["partials"]["removed_bytes"] == orphan_bytes
        assert not orphan.exists(), "the partial of the killed download outlived it"
        assert held.exists() and done["partials"]["live"] == 1, "the partial of a running transfer was removed"
        assert done["cache"]["partial_files"] == 1 and done["cache"]["partial_bytes"] == held_bytes
        assert done["cache"]["held_bytes"] >= held_bytes  # the trim counts what partials take
    finally:
        os.kill(live.pid, signal.SIGCONT)
    output = live.communicate(timeout=300)[0].decode()
    assert live.returncode == 0, output[-3000:]
    assert not list(blobs_dir(root).rglob(f"*{PARTIAL_SUFFIX}"))
    path = cache_blob_path(root, sha)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 * MiB):
            digest.update(chunk)
    assert digest.hexdigest() == sha
