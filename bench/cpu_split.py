"""Where the CPU of a download goes: the S3 server's, s5cmd's, and the hook's, in one run.

Run:  python -m bench.cpu_split [--server seaweedfs|minio] [--shape big|tiny|mixed] [--mb 2000] [--repeat 3]

One object of --mb MB (or bench.transfer's tiny or mixed shape) is uploaded, then downloaded --repeat times
by each client in turn (s5cmd, the hook with sha256 verification against a manifest's values as StageIn
does, the hook checking the objects' own sha256 or ETags, the same on asyncio's own event loop instead of
uvloop's: ``E2E3D_EVENT_LOOP=asyncio``), and the same files' SHA-256 alone from the page
cache (what verification costs): wall seconds, the client's CPU seconds (getrusage of this process or of
the s5cmd child) and the server's (utime + stime of every SeaweedFS or MinIO process, from /proc, before and
after). On a machine whose cores are all busy, wall time is (server CPU + client CPU) / cores: this shows
which of the two a gap comes from. Never a test assertion.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import BENCH_CONN_ID, Aside, bench_environment, settle
from bench.transfer import MB, make_shape, s5cmd

#: the executables of the S3 servers the embedded stack runs
SERVER_EXECUTABLES = (b"weed", b"minio")


def server_cpu() -> float:
    """CPU seconds used so far by every S3 server process (SeaweedFS's ``weed``, ``minio``) on this machine."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not (proc / "cmdline").read_bytes().split(b"\0")[0].endswith(SERVER_EXECUTABLES):
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def client_cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(func: Callable[[Path], None], dest: Path, aside: Aside) -> tuple[float, float, float]:
    aside.remove(dest)  # not deleted: see Aside
    dest.mkdir(parents=True)
    settle()
    server, client, started = server_cpu(), client_cpu(), time.perf_counter()
    func(dest)
    return time.perf_counter() - started, client_cpu() - client, server_cpu() - server


def on_asyncio_loop(func: Callable[[], object]) -> None:
    """``func()`` with the transfers on asyncio's own loop (``E2E3D_EVENT_LOOP``, read as each one starts)."""
    with mock.patch.dict(os.environ, {"E2E3D_EVENT_LOOP": "asyncio"}):
        func()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=2000, help="the size of the one object (shape big)")
    parser.add_argument("--shape", default="big", choices=("big", "tiny", "mixed"), help="as bench.transfer's")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--server", default="seaweedfs", choices=("seaweedfs", "minio"))
    args = parser.parse_args()
    with bench_environment("cpu-split", server=args.server) as base:
        from e2e3d_provider.core.manifest import sha256_file
        from e2e3d_provider.hooks.storage import StorageHook

        storage = StorageHook(BENCH_CONN_ID)
        storage.bootstrap(buckets=("bench-cpu",), versioned=())
        src = base / "src"
        if args.shape == "big":
            src.mkdir()
            with open(src / "scan.bin", "wb") as handle:
                for _ in range(args.mb):
                    handle.write(os.urandom(MB))
        else:
            make_shape(src, args.shape, 1.0)
        files = sorted(path for path in src.rglob("*") if path.is_file())
        expected = {path.relative_to(src).as_posix(): (path.stat().st_size, sha256_file(path)) for path in files}
        storage.upload_dir(src, "bench-cpu", "data/")
        clients: dict[str, Callable[[Path], None]] = {
            "s5cmd": lambda dest: s5cmd("download", src, dest, "bench-cpu", "data/"),
            "hook, manifest sha256": lambda dest: storage.download_prefix(
                "bench-cpu", "data/", dest, expected=expected
            ),
            "hook, object's sha256": lambda dest: storage.download_prefix("bench-cpu", "data/", dest),
            "hook, asyncio's loop": lambda dest: on_asyncio_loop(
                lambda: storage.download_prefix("bench-cpu", "data/", dest)
            ),
            "sha256 of the files alone": lambda dest: [sha256_file(path) for path in files],
        }
        rows: dict[str, list[tuple[float, float, float]]] = {name: [] for name in clients}
        aside = Aside(base)
        for _ in range(args.repeat):
            for name, func in clients.items():
                rows[name].append(measure(func, base / "dst", aside))
        what = f"{args.mb} MB" if args.shape == "big" else f"{args.shape} ({len(files)} files)"
        print(f"\n{what} download from {args.server}, medians of {args.repeat}; CPU in seconds\n")
        print(f"{'client':24s} {'wall':>7s} {'client CPU':>11s} {'server CPU':>11s} {'x s5cmd':>8s}")
        base_wall = statistics.median(r[0] for r in rows["s5cmd"])
        for name, runs in rows.items():
            wall, client, server = (statistics.median(r[i] for r in runs) for i in range(3))
            print(f"{name:24s} {wall:7.2f} {client:11.2f} {server:11.2f} {base_wall / wall:8.2f}")


if __name__ == "__main__":
    main()
