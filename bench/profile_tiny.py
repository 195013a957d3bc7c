"""Where the time of the tiny-file case goes: py-spy samples StorageHook.upload_dir / download_prefix.

Run:  python -m bench.profile_tiny [--files 10000] [--rate 200]

Starts the embedded stack, writes N x 4 KB files, then runs one upload and one download under
``py-spy record --format raw --idle`` at 50 Hz (py-spy comes with the dev extra; ``--native`` at a high
rate slows the run several-fold) and prints, per
direction, the share of the Python threads' samples by what they were doing: waiting (the event loop's
selector, while the Rust client's own threads sign and send), hashing, reading or writing files, or
running Python of ours and asyncio, with the busiest frames.
Also prints the process's CPU seconds against the wall time and the server's CPU seconds.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import BENCH_CONN_ID, bench_environment

CHILD = """
import sys, time, os
from pathlib import Path
from e2e3d_provider.hooks.storage import StorageHook
hook = StorageHook(sys.argv[1])
direction, src, bucket, prefix = sys.argv[2:6]
t0, c0 = time.perf_counter(), os.times()
if direction == "upload":
    hook.upload_dir(src, bucket, prefix)
else:
    hook.download_prefix(bucket, prefix, src)
c1 = os.times()
print(f"wall {time.perf_counter() - t0:.2f}s, client CPU {c1.user - c0.user + c1.system - c0.system:.2f}s")
"""

#: (label, substrings of a frame) in the order they are tried on a sample's innermost frames
CATEGORIES = (
    ("waiting for the server (event loop idle in select/epoll)", ("select (selectors.py", "epoll", "_run_once")),
    ("hashing (hashlib)", ("openssl_", "sha256", "md5", "hashlib")),
    ("file I/O (read, write, rename, mkdir)", ("read_small", "write_new", "os.replace", "mkdir", "io.open")),
)


def categorize(frames: list[str]) -> str:
    inner = frames[-6:]
    for label, signs in CATEGORIES:
        if any(sign in frame for frame in inner for sign in signs):
            return label
    return "Python of ours and asyncio (scheduling, bookkeeping)"


def summarize(raw: Path) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Shares of samples by category, and the busiest innermost frames (idle waits left out)."""
    counts: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        label = categorize(frames)
        counts[label] += int(count)
        if not label.startswith("waiting"):
            leaves[frames[-1].split(" (")[0] + " (" + frames[-1].rsplit("/", 1)[-1]] += int(count)
    total = sum(counts.values()) or 1
    return (
        [(label, 100 * n / total) for label, n in counts.most_common()],
        [(leaf, 100 * n / total) for leaf, n in leaves.most_common(8)],
    )


def weed_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    args = parser.parse_args()
    pyspy = Path(sys.executable).parent / "py-spy"
    with bench_environment("profile") as base:
        from e2e3d_provider.devstack import stack
        from e2e3d_provider.hooks.storage import StorageHook

        src = base / "src"
        for i in range(args.files):
            path = src / f"d{i // 1000:02d}" / f"f_{i:05d}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(4000))
        StorageHook(BENCH_CONN_ID).bootstrap(buckets=("profile",), versioned=())
        weed = stack.read_state(base / "stack").s3_pid
        for direction, target in (("upload", src), ("download", base / "dst")):
            raw = Path(tempfile.mkstemp(suffix=".txt")[1])
            server_before, started = weed_cpu(weed), time.perf_counter()
            record = [str(pyspy), "record", "--format", "raw", "--idle", "--rate", str(args.rate)]
            child = [sys.executable, "-c", CHILD, BENCH_CONN_ID, direction, str(target), "profile", "tiny/"]
            out = subprocess.run(
                [*record, "-o", str(raw), "--", *child],
                capture_output=True,
                text=True,
                check=True,
            )
            wall = time.perf_counter() - started
            timing = [line for line in out.stdout.splitlines() if line.startswith("wall")]
            print(f"\n{direction} of {args.files} x 4 KB: {' '.join(timing)}; ", end="")
            print(f"server CPU {weed_cpu(weed) - server_before:.2f}s over {wall:.2f}s (py-spy included)")
            shares, busiest = summarize(raw)
            for label, share in shares:
                print(f"  {share:5.1f}%  {label}")
            print("  busiest frames:")
            for leaf, share in busiest:
                print(f"    {share:5.1f}%  {leaf}")
            raw.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
