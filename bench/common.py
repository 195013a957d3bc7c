"""What every benchmark needs: the embedded stack (or an external server) and a connection to it."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_CONN_ID = "minio_bench"
#: a folder of more files than this is set aside between timed runs rather than deleted (see Aside)
ASIDE_MIN_FILES = 100


def settle() -> None:
    """Write back every dirty page before a timed run (``sync``, untimed), so that no run pays for the
    write-back of the files the run before it wrote. After a 2 GB download the kernel holds 2 GB of dirty
    pages and flushes them whenever its thresholds say, often in the middle of the next client's run:
    without this, one client's 2 GB download ratio to the other moved between 0.60x and 1.58x from one
    repetition to the next on this machine."""
    os.sync()


class Aside:
    """Frees the files timed runs leave behind only when the timing is over.

    ext4 (this machine's and most Linux disks) allocates an inode slowly for about a minute after many
    were freed: its allocator reads the inode table to skip recently deleted ones (``recently_deleted``
    in ``perf``). 10,000 file creates took 0.23 s on a quiet disk and 2.1-3.7 s right after 10,000 files
    were deleted, so deleting a run's output just before the next run gave that run, whichever client
    it was, up to 3 s more on the 10,000-file shape. Folders (and, through ``later``, any clean-up such
    as a bucket prefix the server would delete file by file) of more than :data:`ASIDE_MIN_FILES` files
    wait here until :meth:`empty`; smaller ones (a single 2 GB file) are deleted at once, to keep disk."""

    def __init__(self, base: Path) -> None:
        self.base = base / "aside"
        self.deferred: list[Callable[[], object]] = []
        self.moved = 0

    def remove(self, path: Path) -> None:
        """Delete ``path`` now if it holds few files, else move it out of the way until :meth:`empty`."""
        if not path.exists():
            return
        if sum(len(names) for _, _, names in os.walk(path)) <= ASIDE_MIN_FILES:
            shutil.rmtree(path, ignore_errors=True)
            return
        self.base.mkdir(exist_ok=True)
        self.moved += 1
        path.rename(self.base / f"{self.moved}-{path.name}")

    def later(self, many_files: bool, cleanup: Callable[[], object]) -> None:
        """Run ``cleanup`` now if it frees few files, else at :meth:`empty`."""
        if many_files:
            self.deferred.append(cleanup)
        else:
            cleanup()

    def empty(self) -> None:
        """Run the deferred clean-ups and delete what was set aside (between shapes, untimed)."""
        for cleanup in self.deferred:
            cleanup()
        self.deferred.clear()
        shutil.rmtree(self.base, ignore_errors=True)


@contextmanager
def bench_environment(name: str, server: str = "seaweedfs") -> Iterator[Path]:
    """A scratch directory, a running S3 server and PostgreSQL (the embedded stack unless
    ``E2E3D_TEST_S3_ENDPOINT`` + keys name a server), and the ``minio_bench`` connection to it.
    ``server``: the embedded stack's S3 server, ``seaweedfs`` or ``minio`` (``$E2E3D_MINIO_BINARY`` or
    ``minio`` on PATH, else the pinned test build, fetched once)."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="e2e3d-bench-airflow-"))
    from e2e3d_provider.devstack import stack

    base = Path(tempfile.mkdtemp(prefix=f"e2e3d-bench-{name}-"))
    saved = dict(os.environ)  # restored at the end: a second environment starts its own stack
    info = None
    if not os.environ.get("E2E3D_TEST_S3_ENDPOINT"):
        if server == "minio" and not (os.environ.get("E2E3D_MINIO_BINARY") or shutil.which("minio")):
            from tests.minio_binary import ensure_minio

            os.environ["E2E3D_MINIO_BINARY"] = str(ensure_minio())
        info = stack.start_stack(base / "stack", owner_pid=os.getpid(), server=server)
        os.environ.update(info.env())
    os.environ[f"AIRFLOW_CONN_{BENCH_CONN_ID.upper()}"] = json.dumps(
        {
            "conn_type": "aws",
            "login": os.environ["E2E3D_TEST_S3_ACCESS_KEY"],
            "password": os.environ["E2E3D_TEST_S3_SECRET_KEY"],
            "extra": {"endpoint_url": os.environ["E2E3D_TEST_S3_ENDPOINT"], "region_name": "us-east-1"},
        }
    )
    try:
        yield base
    finally:
        if info is not None:
            stack.stop_stack(base / "stack")
        shutil.rmtree(base, ignore_errors=True)
        os.environ.clear()
        os.environ.update(saved)
