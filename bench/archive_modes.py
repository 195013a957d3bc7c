"""Archive a completed job: server-side copies vs one packed (tar) object per run.

Named baselines, in one run on the same published job:
  server-copy   ArchiveOperator's path: one CopyObject per file (parallel), verified by HEAD
  pack-tar      stream every object through the worker into one uncompressed tar, upload it
                as a single object (what "one packed object per run" costs)

Run:  python bench/archive_modes.py [--small 40] [--small-kib 256] [--large 2] [--large-mib 8] [--repeat 3]
It starts the embedded stack unless E2E3D_TEST_S3_ENDPOINT (+ keys) points at a server.
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import BENCH_CONN_ID, bench_environment


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=40)
    parser.add_argument("--small-kib", type=int, default=256)
    parser.add_argument("--large", type=int, default=2)
    parser.add_argument("--large-mib", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with bench_environment("archive") as base:
        from e2e3d_provider.core.manifest import sha256_file
        from e2e3d_provider.hooks.storage import StorageHook
        from e2e3d_provider.lifecycle.durability.archive import archive_job
        from e2e3d_provider.lifecycle.results.publish import publish_run
        from e2e3d_provider.lifecycle.results.published import read_published_manifest

        storage = StorageHook(BENCH_CONN_ID)
        storage.bootstrap()
        run_dir = base / "run"
        for i in range(args.small):
            path = run_dir / "pointcloud" / f"chunk_{i:03d}.ply"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(args.small_kib * 1024))
        for i in range(args.large):
            path = run_dir / "textures" / f"texture_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(args.large_mib * 1024 * 1024))
        job = f"bench-{uuid.uuid4().hex[:8]}"
        published = publish_run(storage, run_dir, job, "20261124T120000Z", "output")
        print(f"job: {published.files} files, {published.bytes / 1e6:.1f} MB; best of {args.repeat}")

        def server_copy(i: int) -> float:
            started = time.perf_counter()
            archive_job(storage, job, archive_bucket="archive")
            return time.perf_counter() - started

        def pack(i: int) -> float:
            started = time.perf_counter()
            manifest = read_published_manifest(storage, "output", job)
            tar_path = base / f"pack-{i}.tar"
            with tarfile.open(tar_path, "w") as tar:
                for entry in manifest.files:
                    local = base / "pack-tmp"
                    storage.download_file("output", f"{job}/{entry.path}", local)
                    tar.add(local, arcname=entry.path)
                    local.unlink()
            storage.upload_file(tar_path, "archive", f"{job}/{job}_{manifest.stamp}.tar", sha256=sha256_file(tar_path))
            tar_path.unlink()
            return time.perf_counter() - started

        copy_s = min(server_copy(i) for i in range(args.repeat))
        pack_s = min(pack(i) for i in range(args.repeat))
        mb = published.bytes / 1e6
        print(f"\n{'mode':<12}{'seconds':>9}{'MB/s':>9}{'x pack-tar':>12}")
        print(f"{'server-copy':<12}{copy_s:>9.2f}{mb / copy_s:>9.1f}{pack_s / copy_s:>12.2f}")
        print(f"{'pack-tar':<12}{pack_s:>9.2f}{mb / pack_s:>9.1f}{1.0:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
