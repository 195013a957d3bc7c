"""Upload/download throughput of the candidate client paths against a serial ``fput_object`` loop.

Named baselines (all on the same files, the same server, in one run):
  serial-minio   a plain loop of minio ``fput_object`` / ``fget_object`` (no checksums)
  hook-minio     StorageHook.upload_dir / download_prefix: minio SDK + bounded thread pool,
                 sha256 in metadata, skip check, verified atomic downloads (the chosen path)
  boto3-tm       boto3's transfer manager (upload_file / download_file) over the same
                 connection, in the same bounded thread pool, also hashing for sha256 metadata

Run:  [E2E3D_BENCH_WORKERS=8] python bench/transfer_paths.py [--small 48] [--small-kib 512]
      [--large 3] [--large-mib 24] [--repeat 3]
It starts the embedded stack unless E2E3D_TEST_S3_ENDPOINT (+ keys) points at a server.
Prints MB/s per path and the ratio against serial-minio. Never used as a test assertion.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import BENCH_CONN_ID, bench_environment

MiB = 1024 * 1024
WORKERS = int(os.environ.get("E2E3D_BENCH_WORKERS", "8"))


def make_files(root: Path, small: int, small_kib: int, large: int, large_mib: int) -> list[Path]:
    files = []
    for i in range(small):
        path = root / "images" / f"img_{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(small_kib * 1024))
        files.append(path)
    for i in range(large):
        path = root / "video" / f"scan_{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            for _ in range(large_mib):
                handle.write(os.urandom(MiB))
        files.append(path)
    return files


def best_of(repeat: int, run: Callable[[int], float]) -> float:
    return min(run(i) for i in range(repeat))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=48)
    parser.add_argument("--small-kib", type=int, default=512)
    parser.add_argument("--large", type=int, default=3)
    parser.add_argument("--large-mib", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with bench_environment("transfer") as base:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config
        from minio import Minio

        from e2e3d_provider.core.manifest import sha256_file
        from e2e3d_provider.hooks.storage import StorageHook

        endpoint = os.environ["E2E3D_TEST_S3_ENDPOINT"]
        access, secret = os.environ["E2E3D_TEST_S3_ACCESS_KEY"], os.environ["E2E3D_TEST_S3_SECRET_KEY"]

        hook = StorageHook(BENCH_CONN_ID, max_workers=WORKERS)
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        hook.bootstrap(buckets=(bucket,), versioned=())
        minio = Minio(hook.settings.endpoint, access_key=access, secret_key=secret, secure=False)
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                max_pool_connections=WORKERS * 2,
            ),
        )
        tm_config = TransferConfig(
            multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB, max_concurrency=2, use_threads=True
        )

        src = base / "src"
        files = make_files(src, args.small, args.small_kib, args.large, args.large_mib)
        rels = [p.relative_to(src).as_posix() for p in files]
        total = sum(p.stat().st_size for p in files)
        print(
            f"dataset: {len(files)} files, {total / 1e6:.1f} MB ({args.small} x {args.small_kib} KiB + "
            f"{args.large} x {args.large_mib} MiB); {WORKERS} workers; best of {args.repeat}"
        )

        def timed(func: Callable[[], object]) -> float:
            started = time.perf_counter()
            func()
            return time.perf_counter() - started

        # ---- uploads (a fresh prefix per run, so nothing is skipped) -------------------------
        def up_serial(i: int) -> float:
            pairs = list(zip(rels, files, strict=True))
            return timed(lambda: [minio.fput_object(bucket, f"serial{i}/{r}", str(p)) for r, p in pairs])

        def up_hook(i: int) -> float:
            return timed(lambda: hook.upload_dir(src, bucket, f"hook{i}"))

        def up_boto(i: int) -> float:
            def one(item: tuple[str, Path]) -> None:
                rel, path = item
                s3.upload_file(
                    str(path),
                    bucket,
                    f"boto{i}/{rel}",
                    Config=tm_config,
                    ExtraArgs={"Metadata": {"sha256": sha256_file(path)}},
                )

            def run() -> None:
                with ThreadPoolExecutor(WORKERS) as pool:
                    list(pool.map(one, zip(rels, files, strict=True)))

            return timed(run)

        up = {
            "serial-minio": best_of(args.repeat, up_serial),
            "hook-minio": best_of(args.repeat, up_hook),
            "boto3-tm": best_of(args.repeat, up_boto),
        }

        # ---- downloads (a fresh directory per run, so nothing is cached) ---------------------
        def fresh(name: str) -> Path:
            path = base / name
            shutil.rmtree(path, ignore_errors=True)
            return path

        def down_serial(i: int) -> float:
            dest = fresh("d-serial")
            return timed(lambda: [minio.fget_object(bucket, f"hook0/{r}", str(dest / r)) for r in rels])

        def down_hook(i: int) -> float:
            dest = fresh("d-hook")
            return timed(lambda: hook.download_prefix(bucket, "hook0", dest))

        def down_boto(i: int) -> float:
            dest = fresh("d-boto")

            def one(rel: str) -> None:
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, f"hook0/{rel}", str(target), Config=tm_config)
                head = s3.head_object(Bucket=bucket, Key=f"hook0/{rel}")
                assert sha256_file(target) == head["Metadata"]["sha256"]

            def run() -> None:
                with ThreadPoolExecutor(WORKERS) as pool:
                    list(pool.map(one, rels))

            return timed(run)

        down = {
            "serial-minio": best_of(args.repeat, down_serial),
            "hook-minio": best_of(args.repeat, down_hook),
            "boto3-tm": best_of(args.repeat, down_boto),
        }

        cached = timed(lambda: hook.download_prefix(bucket, "hook0", base / "d-hook"))
        rerun = timed(lambda: hook.upload_dir(src, bucket, "hook0"))

        print(f"\n{'path':<14}{'upload MB/s':>13}{'x serial':>10}{'download MB/s':>16}{'x serial':>10}")
        for name in ("serial-minio", "hook-minio", "boto3-tm"):
            print(
                f"{name:<14}{total / 1e6 / up[name]:>13.1f}{up['serial-minio'] / up[name]:>10.2f}"
                f"{total / 1e6 / down[name]:>16.1f}{down['serial-minio'] / down[name]:>10.2f}"
            )
        print(
            f"\nhook-minio vs boto3-tm: upload x{up['boto3-tm'] / up['hook-minio']:.2f}, "
            f"download x{down['boto3-tm'] / down['hook-minio']:.2f} (>1 means hook-minio is faster)"
        )
        print(f"rerun of an unchanged upload: {rerun:.2f}s (0 bytes sent); cached download: {cached:.2f}s (0 bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
