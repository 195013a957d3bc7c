"""Crash safety of the commit protocol: SIGKILL the S3 server mid-publish, restart it, rerun.

At every kill point: no SUCCESS is ever found over an incomplete or unverified set, and the
rerun completes sending only the files that were not already stored and verified.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e3d_provider.core.etag import local_etag
from e2e3d_provider.core.manifest import Manifest, build_manifest
from e2e3d_provider.devstack import stack
from e2e3d_provider.exceptions import StorageError
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.results.publish import publish_run
from tests.helpers import own_stack_server, write_files

MiB = 1024 * 1024
STAMP = "20261124T120000Z"
#: kill the server right after this many files were stored (and once after all of them) ...
PROGRESS_KILL_POINTS = (1, 5, 10, 15, 20, 25)
#: ... and at this many seeded random moments of a publish, plus once at its very start
RANDOM_KILL_POINTS = 4


@pytest.fixture(scope="module")
def crash_stack(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.StackInfo]:
    """A stack of this module's own, on the lane's server: killing its S3 server disturbs no other test."""
    base = tmp_path_factory.mktemp("crash-stack")
    info = stack.start_stack(base, owner_pid=os.getpid(), server=own_stack_server(s3_server))
    os.environ["AIRFLOW_CONN_MINIO_CRASH"] = json.dumps(info.minio_conn())
    StorageHook("minio_crash").bootstrap(buckets=("output",), versioned=("output",))
    try:
        yield info
    finally:
        stack.stop_stack(base)
        os.environ.pop("AIRFLOW_CONN_MINIO_CRASH", None)


def hook(attempts: int = 1) -> StorageHook:
    """A fresh client each time: the server behind the old one's pooled connections may be gone. One
    attempt while the server is being killed (a retry would hide the crash); after a restart, a few
    (SeaweedFS answers InternalError for a moment while its volumes register again)."""
    return StorageHook("minio_crash", attempts=attempts, part_size=5 * MiB, max_workers=4)


def make_run_dir(root: Path) -> Path:
    rng = random.Random(7)
    files = {f"pointcloud/chunk_{i:02d}.ply": rng.randbytes(256 * 1024) for i in range(24)}
    files["mesh/reconstructed_mesh.obj"] = rng.randbytes(6 * MiB)  # multipart
    files["textures/texture.png"] = rng.randbytes(6 * MiB)  # multipart
    write_files(root, files)
    return root


def assert_no_success_over_an_incomplete_set(storage: StorageHook, job_id: str, manifest: Manifest) -> bool:
    """If SUCCESS exists, the stored manifest and every object it lists must match; True if SUCCESS exists."""
    if not storage.exists("output", f"{job_id}/SUCCESS"):
        return False
    stored = Manifest.from_json(storage.get_bytes("output", f"{job_id}/metadata.json"))
    assert [e.path for e in stored.files] == [e.path for e in manifest.files]
    for entry in stored.files:
        remote = storage.stat("output", f"{job_id}/{entry.path}")
        assert remote is not None, f"SUCCESS present but {entry.path} missing"
        assert (remote.size, remote.etag) == (entry.size, entry.etag), f"SUCCESS over unverified {entry.path}"
        # the truth: the stored bytes, read and hashed now, are the manifest's (never the object's own label)
        assert storage.read_sha256("output", f"{job_id}/{entry.path}") == entry.sha256, entry.path
    return True


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def crash_and_rerun(
    crash_stack: stack.StackInfo,
    run_dir: Path,
    manifest: Manifest,
    job_id: str,
    after_files: int | None = None,
    after_seconds: float | None = None,
) -> tuple[bool, int]:
    """Publish, SIGKILL the S3 server after ``after_files`` uploaded files (or ``after_seconds``),
    restart it, check the SUCCESS invariant, rerun, check what the rerun sent. Returns
    (publish crashed, files already verified before the rerun)."""
    base = Path(crash_stack.base_dir)
    pid = stack.read_state(base).s3_pid
    timer = threading.Timer(after_seconds, kill, (pid,)) if after_seconds is not None else None

    def on_progress(done: int, total: int) -> None:
        if after_files is not None and done == after_files:
            kill(pid)

    if timer:
        timer.start()
    try:
        publish_run(hook(), run_dir, job_id, STAMP, "output", on_progress=on_progress)
        crashed = False
    except (StorageError, OSError):
        crashed = True
    if timer:
        timer.join()
    kill(pid)  # a kill that came after the publish finished still restarts the server
    stack.restart_s3(base)

    storage = hook(attempts=5)
    had_success = assert_no_success_over_an_incomplete_set(storage, job_id, manifest)
    assert not (crashed and had_success), f"{job_id}: a failed publish left SUCCESS behind"
    # already stored: the object the server holds has the local file's size and ETag (what the rerun checks)
    etags = {e.path: local_etag(run_dir / e.path, e.size, 5 * MiB)[1] for e in manifest.files}
    verified = sum(
        1
        for e in manifest.files
        if (r := storage.stat("output", f"{job_id}/{e.path}")) and (r.size, r.etag) == (e.size, etags[e.path])
    )
    rerun = publish_run(storage, run_dir, job_id, STAMP, "output")
    assert rerun.uploaded_files == len(manifest.files) - verified, (job_id, verified, rerun)
    assert assert_no_success_over_an_incomplete_set(storage, job_id, manifest)
    return crashed, verified


@pytest.mark.slow
def test_kill_s3_at_many_points_during_publish(crash_stack: stack.StackInfo, tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path / "run")
    manifest = build_manifest(run_dir, "job", STAMP)
    total = len(manifest.files)
    outcomes = []
    # Deterministic points: right after k files were stored; k == total kills before manifest and SUCCESS.
    for k in (*PROGRESS_KILL_POINTS, total):
        crashed, verified = crash_and_rerun(crash_stack, run_dir, manifest, f"crash-files-{k}", after_files=k)
        assert crashed, f"the kill after {k} files did not interrupt the publish"
        assert verified >= min(k, total) - 4  # in-flight uploads (4 workers) may be lost, nothing else
        outcomes.append((f"after {k} files", verified))
    # Random points in time, from the very start to about the end of a warm publish.
    started = time.monotonic()
    publish_run(hook(), run_dir, "crash-warmup", STAMP, "output")
    warm = time.monotonic() - started
    rng = random.Random(2026)
    for i, delay in enumerate([0.0] + [rng.uniform(0, warm) for _ in range(RANDOM_KILL_POINTS)]):
        crashed, verified = crash_and_rerun(crash_stack, run_dir, manifest, f"crash-time-{i}", after_seconds=delay)
        outcomes.append((f"at {delay:.2f}s{' (crashed)' if crashed else ''}", verified))
    print(f"kill points ({len(outcomes)}; files already verified of {total}): {outcomes}")


@pytest.mark.slow
def test_rerun_replaces_a_changed_file_and_drops_stale_objects(crash_stack: stack.StackInfo, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    write_files(run_dir, {"mesh/a.obj": b"v 1", "logs/old.log": b"old", "textures/t.png": b"png"})
    storage = hook()
    first = publish_run(storage, run_dir, "rerun-job", STAMP, "output")
    assert first.uploaded_files == 3
    (run_dir / "mesh/a.obj").write_bytes(b"v 2")
    (run_dir / "logs/old.log").unlink()
    second = publish_run(storage, run_dir, "rerun-job", STAMP, "output")
    assert (second.uploaded_files, second.removed_stale, second.files) == (1, 1, 2)
    assert storage.list_keys("output", "rerun-job") == [
        "rerun-job/SUCCESS",
        "rerun-job/mesh/a.obj",
        "rerun-job/metadata.json",
        "rerun-job/textures/t.png",
    ]
    assert storage.get_bytes("output", "rerun-job/mesh/a.obj") == b"v 2"
    assert (run_dir / "SUCCESS").exists() and json.loads((run_dir / "SUCCESS").read_text())["files"] == 2
