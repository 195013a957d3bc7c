"""What every benchmark needs: the embedded stack (or an external server) and a connection to it."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_CONN_ID = "minio_bench"


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
