"""ASCII PLY point clouds: the numpy reader every install has against pyarrow's (the optional ``arrow`` extra).

Run:  python -m bench.ascii_ply [--points 2000000] [--repeat 2]

Writes a single-spaced ASCII PLY of ``--points`` points (x y z as floats, red green blue as bytes; what
pyarrow's CSV reader takes) once, then reads it through ``iter_points`` with pyarrow and with pyarrow hidden
(as an install without the extra sees it), alternating, ``--repeat`` times each. Prints the best seconds of
each, MB/s and the ratio. It is why pyarrow (170 MB) is an optional accelerator and not a requirement: binary
PLY, what reconstruction tools write, needs neither reader. Never a test assertion.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from e2e3d_provider.rightsize import pointcloud

HEADER = (
    "ply\nformat ascii 1.0\nelement vertex {count}\nproperty float x\nproperty float y\nproperty float z\n"
    "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
)


def write_cloud(path: Path, points: int) -> None:
    """A single-spaced ASCII cloud of ``points`` random points, written in blocks."""
    rng = np.random.default_rng(1)
    with open(path, "w") as handle:
        handle.write(HEADER.format(count=points))
        for start in range(0, points, 500_000):
            n = min(500_000, points - start)
            rows = np.column_stack([rng.random((n, 3)) * 100, rng.integers(0, 256, (n, 3))])
            np.savetxt(handle, rows, fmt="%.6f %.6f %.6f %d %d %d")


def read_seconds(path: Path, with_arrow: bool) -> float:
    """Seconds to read every point of ``path`` through ``iter_points``, with pyarrow or with it hidden."""
    hidden = {name: sys.modules.get(name) for name in ("pyarrow", "pyarrow.csv")}
    if not with_arrow:
        sys.modules.update(dict.fromkeys(hidden))  # None: an import of it fails, as without the extra
    try:
        began = time.perf_counter()
        header = pointcloud.read_header(path)
        count = sum(len(chunk) for chunk in pointcloud.iter_points(path, header))
        seconds = time.perf_counter() - began
    finally:
        for name, module in hidden.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    assert count == header.count
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=2_000_000, help="points in the generated cloud")
    parser.add_argument("--repeat", type=int, default=2, help="reads of each reader (best counts)")
    parser.add_argument("--data", type=Path, default=Path("/tmp/e2e3d-bench-ascii-ply"), help="where the cloud is")
    args = parser.parse_args()
    if not pointcloud._arrow_installed():
        print("pyarrow is not installed: pip install '.[arrow]' to compare", file=sys.stderr)
        return 1
    args.data.mkdir(parents=True, exist_ok=True)
    path = args.data / f"cloud-{args.points}.ply"
    if not path.exists():
        write_cloud(path, args.points)
    size_mb = path.stat().st_size / 1e6
    best = {"pyarrow": float("inf"), "numpy": float("inf")}
    for _ in range(args.repeat):
        best["pyarrow"] = min(best["pyarrow"], read_seconds(path, with_arrow=True))
        best["numpy"] = min(best["numpy"], read_seconds(path, with_arrow=False))
    print(f"{args.points:,} points, {size_mb:.0f} MB of ASCII PLY, best of {args.repeat}")
    for name, seconds in best.items():
        print(f"  {name:8} {seconds:6.2f} s  {size_mb / seconds:6.1f} MB/s")
    print(f"  numpy / pyarrow: x{best['numpy'] / best['pyarrow']:.2f} the time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
