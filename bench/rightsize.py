"""Right-sizing on realistic data: bytes before and after per kind, seconds per step, peak RSS, LOD error,
against named baselines, with the issue's targets marked.

    python -m bench.rightsize                  # generate (once, cached) the bench data and measure
    python -m bench.rightsize --big-ply-gb 2   # also stream a PLY of that size (peak RSS < 500 MB)

Data (bench/rightsize_data.py, scale "bench"): a displaced terrain of 999,698 faces with UVs (OBJ + MTL),
an 8192 x 8192 RGB texture (PNG), 5,000,000 coloured points (ASCII PLY). Each step runs in a fresh child
process, so its peak RSS is its own.

Baselines: the OBJ / PNG / ASCII PLY themselves (bytes); fast-simplification (the Fast Quadric Mesh
Simplification wrapper) against meshoptimizer, the simplifier right-sizing uses; Pillow's
``optimize=True`` PNG re-encode against oxipng.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path("/tmp/e2e3d-bench-rightsize")


def _child(step: str, run_dir: Path) -> dict[str, Any]:
    """Run one step in a fresh interpreter; returns its JSON result with its own peak RSS."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.rightsize", "--child", step, "--data", str(run_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise SystemExit(f"step {step} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(step: str, run_dir: Path) -> dict[str, Any]:
    """One measured step, printed as one JSON line."""
    sys.path.insert(0, str(ROOT))
    began = time.perf_counter()
    result: dict[str, Any] = {}
    if step == "all":
        from e2e3d_provider.lifecycle.results.rightsize import right_size_run
        from e2e3d_provider.rightsize.policy import RightSizePolicy

        record = right_size_run(run_dir, RightSizePolicy())
        result = {"statistics": record.statistics, "variants": [v.__dict__ for v in record.variants]}
    elif step in ("meshopt", "fast-simplification"):
        import numpy as np

        from e2e3d_provider.rightsize import mesh

        full = mesh.read_obj(run_dir / "mesh/reconstructed_mesh.obj")
        began = time.perf_counter()
        if step == "meshopt":
            lod = mesh.simplify(full, 0.25)
        else:
            import fast_simplification

            points, faces = fast_simplification.simplify(full.positions.astype(np.float32), full.faces, 0.75)
            lod = mesh.Mesh(points.astype(np.float64), faces)
        result["seconds"] = time.perf_counter() - began
        result["faces"] = len(lod.faces)
        result.update(mesh.surface_error(full, lod, 100_000))
        result["keeps_uvs"] = lod.uvs is not None
    elif step == "pillow-optimize":
        from PIL import Image

        with Image.open(run_dir / "textures/texture.png") as image:
            image.load()
            began = time.perf_counter()
            image.save("/tmp/e2e3d-bench-pillow.png", optimize=True)
        result["seconds"] = time.perf_counter() - began
        result["bytes"] = Path("/tmp/e2e3d-bench-pillow.png").stat().st_size
        Path("/tmp/e2e3d-bench-pillow.png").unlink()
    elif step.startswith("laz:"):  # the LAZ baseline: laspy + lazrs at a given coordinate scale
        import laspy
        import numpy as np

        from e2e3d_provider.rightsize import pointcloud as clouds

        source = run_dir / "pointcloud/lod0/pointcloud.ply"
        header = clouds.read_header(source)
        las = laspy.LasHeader(point_format=2, version="1.2")
        las.offsets, las.scales = np.array([-50.0, 0.0, -50.0]), np.array([float(step[4:])] * 3)
        target = Path("/tmp/e2e3d-bench.laz")
        began = time.perf_counter()
        with laspy.open(target, mode="w", header=las, do_compress=True) as writer:
            for chunk in clouds.iter_points(source, header):
                points = laspy.ScaleAwarePointRecord.zeros(len(chunk), header=las)
                points.x, points.y, points.z = chunk["x"], chunk["y"], chunk["z"]
                for colour in ("red", "green", "blue"):
                    setattr(points, colour, chunk[colour].astype(np.uint16) * 257)
                writer.write_points(points)
        result["seconds"] = time.perf_counter() - began
        result["bytes"] = target.stat().st_size
        target.unlink()
    elif step == "big-ply":
        from e2e3d_provider.core.variants import RightSizeRecord
        from e2e3d_provider.lifecycle.results.rightsize import right_size_pointcloud
        from e2e3d_provider.rightsize.policy import RightSizePolicy

        record = RightSizeRecord()
        right_size_pointcloud(run_dir, "pointcloud/pointcloud.ply", RightSizePolicy(), record)
        result = {"variants": [v.__dict__ for v in record.variants]}
    result["wall"] = time.perf_counter() - began
    result["peak_rss_mb"] = _peak_mb()
    return result


def ensure_data(data: Path) -> dict[str, int]:
    from bench.rightsize_data import SCALES, make_results

    marker = data / ".complete"
    if not marker.exists():
        for folder in ("mesh", "textures", "pointcloud"):  # a fresh copy, no variants of an earlier run
            for path in sorted((data / folder).rglob("*"), reverse=True) if (data / folder).exists() else []:
                path.unlink() if path.is_file() else path.rmdir()
        print(f"generating the bench data in {data} ...", flush=True)
        began = time.perf_counter()
        counts = make_results(data, "bench")
        print(f"  {counts} in {time.perf_counter() - began:.0f} s", flush=True)
        marker.write_text(json.dumps(counts))
    scale = SCALES["bench"]
    return {"faces": 2 * (scale.grid - 1) ** 2, "pixels": scale.texture**2, "points": scale.points}


def big_ply(data: Path, gigabytes: float) -> None:
    """Stream a PLY of ``gigabytes`` GB (binary rewrite + voxel LODs) in a child; print its peak RSS."""
    from bench.rightsize_data import write_pointcloud

    run = data.parent / f"{data.name}-big"
    ply = run / "pointcloud/pointcloud.ply"
    points = int(gigabytes * 1e9 / 41)  # about 41 bytes a row as the generator writes them
    if not ply.exists() or abs(ply.stat().st_size - gigabytes * 1e9) > 0.1e9:
        print(f"generating a {gigabytes:g} GB ASCII PLY ({points:,} points) ...", flush=True)
        write_pointcloud(run, points)
    result = _child("big-ply", run)
    size = ply.stat().st_size
    print(f"\n## {size / 1e9:.2f} GB ASCII PLY, streamed ({points:,} points)")
    print("| variant | points | bytes | of ASCII |")
    print("|---|---|---|---|")
    for v in result["variants"]:
        f = v["figures"]
        print(f"| {v['path']} | {f['points']:,} | {f['bytes']:,} | {f['bytes'] / size:.3f} |")
    verdict = "holds" if result["peak_rss_mb"] < 500 else "MISSES"
    print(f"wall {result['wall']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB (target < 500 MB: {verdict})")
    for leftover in sorted(ply.parent.glob("lod*")):  # keep the generated PLY, drop the variants
        shutil.rmtree(leftover)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="where the bench data is made and kept")
    parser.add_argument("--big-ply-gb", type=float, default=0.0, help="also stream a PLY of this many GB")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data), default=str))
        return
    sys.path.insert(0, str(ROOT))
    counts = ensure_data(args.data)
    sizes = {
        "mesh": (args.data / "mesh/reconstructed_mesh.obj").stat().st_size,
        "texture": (args.data / "textures/texture.png").stat().st_size,
        "pointcloud": (args.data / "pointcloud/pointcloud.ply").stat().st_size,
    }
    print(f"data: {counts['faces']:,} faces, {counts['pixels']:,} pixels, {counts['points']:,} points")
    whole = _child("all", args.data)
    stats, variants = whole["statistics"], whole["variants"]
    by_path = {v["path"]: v for v in variants}

    print("\n## Bytes and seconds per kind (RightSizePolicy defaults, one process, 2 cores)")
    print("| kind | original bytes | variants | variant bytes | seconds |")
    print("|---|---|---|---|---|")
    for kind in ("texture", "mesh", "pointcloud"):
        s = stats[kind]
        print(f"| {kind} | {s['original_bytes']:,} | {s['variants']} | {s['variant_bytes']:,} | {s['seconds']:.1f} |")
    print(f"| all | | {len(variants)} | | **{whole['wall']:.1f}** (peak RSS {whole['peak_rss_mb']:.0f} MB) |")

    print("\n## Mesh level-of-detail chain (error as a fraction of the bounding-box diagonal)")
    print("| level | faces | OBJ bytes | GLB bytes | GLB / original OBJ | Hausdorff | mean distance |")
    print("|---|---|---|---|---|---|---|")
    glb0 = by_path["mesh/lod0/reconstructed_mesh.glb"]["figures"]
    for level in range(0, 4):
        glb = by_path[f"mesh/lod{level}/reconstructed_mesh.glb"]["figures"]
        obj = by_path.get(f"mesh/lod{level}/reconstructed_mesh.obj", {}).get("figures", {"bytes": sizes["mesh"]})
        print(
            f"| {level} | {glb['faces']:,} | {obj['bytes']:,} | {glb['bytes']:,} | {glb['bytes'] / sizes['mesh']:.4f} "
            f"| {glb['hausdorff']:.5f} | {glb['mean_distance']:.6f} |"
        )
    chain_obj = sum(by_path[f"mesh/lod{n}/reconstructed_mesh.obj"]["figures"]["bytes"] for n in (1, 2, 3))
    chain_glb = sum(by_path[f"mesh/lod{n}/reconstructed_mesh.glb"]["figures"]["bytes"] for n in (1, 2, 3))
    chain_all = sum(v["figures"]["bytes"] for v in variants if v["source"].startswith("mesh/"))

    print("\n## Simplifiers, LOD1 (25 % of the faces), each in a fresh process")
    print("| simplifier | seconds | faces | Hausdorff | mean distance | keeps UVs | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for name in ("meshopt", "fast-simplification"):
        r = _child(name, args.data)
        print(
            f"| {name} | {r['seconds']:.2f} | {r['faces']:,} | {r['hausdorff']:.5f} | {r['mean_distance']:.6f} "
            f"| {r['keeps_uvs']} | {r['peak_rss_mb']:.0f} |"
        )

    print("\n## Texture")
    png = by_path.get("textures/lod0/texture.png", {}).get("figures")
    pillow = _child("pillow-optimize", args.data)
    print("| encoding | bytes | of input | seconds | pixels identical |")
    print("|---|---|---|---|---|")
    print(f"| input PNG | {sizes['texture']:,} | 1.000 | | |")
    share = pillow["bytes"] / sizes["texture"]
    print(
        f"| Pillow optimize=True (baseline) | {pillow['bytes']:,} | {share:.3f} | {pillow['seconds']:.1f} | lossless |"
    )
    if png:
        share = png["bytes"] / sizes["texture"]
        print(f"| oxipng (lod0) | {png['bytes']:,} | {share:.3f} | (texture step) | {png['pixels_identical']} |")
    web = by_path["textures/web/texture.jpg"]["figures"]
    tiles = [v for v in variants if v["role"] == "tile" and "row" in v["figures"]]
    print(f"| web JPEG | {web['bytes']:,} | {web['bytes'] / sizes['texture']:.3f} | | lossy |")
    tile_bytes = sum(t["figures"]["bytes"] for t in tiles)
    print(f"tiles: {len(tiles)} in {len({t['level'] for t in tiles})} levels, {tile_bytes:,} bytes")

    print("\n## Point cloud")
    print("| variant | points | bytes | of ASCII |")
    print("|---|---|---|---|")
    print(f"| ASCII PLY (input) | {counts['points']:,} | {sizes['pointcloud']:,} | 1.000 |")
    for level in range(0, 4):
        v = by_path[f"pointcloud/lod{level}/pointcloud.ply"]["figures"]
        print(f"| lod{level} binary PLY | {v['points']:,} | {v['bytes']:,} | {v['bytes'] / sizes['pointcloud']:.3f} |")

    for scale, meaning in (("1e-6", "the ASCII's own 6 decimals: lossless"), ("1e-4", "0.1 mm: lossy")):
        laz = _child(f"laz:{scale}", args.data)
        share = laz["bytes"] / sizes["pointcloud"]
        print(f"| LAZ baseline, scale {scale} ({meaning}) | {counts['points']:,} | {laz['bytes']:,} | {share:.3f} |")
    binary = by_path["pointcloud/lod0/pointcloud.ply"]["figures"]["bytes"] / sizes["pointcloud"]
    lod1_error = by_path["mesh/lod1/reconstructed_mesh.obj"]["figures"]["hausdorff"]
    targets = [
        ("GLB of LOD0 <= 10 % of the OBJ bytes", glb0["bytes"] / sizes["mesh"], 0.10),
        ("LOD chain adds <= 40 % of LOD0 (LOD1-3 OBJ)", chain_obj / sizes["mesh"], 0.40),
        ("every mesh variant (OBJ, MTL, GLB) adds <= 40 % of LOD0", chain_all / sizes["mesh"], 0.40),
        ("LOD chain adds <= 40 % of LOD0 (GLB)", chain_glb / glb0["bytes"], 0.40),
        (
            "optimized PNG smaller than the input",
            (png or {"bytes": sizes["texture"]})["bytes"] / sizes["texture"],
            0.9999,
        ),
        ("point cloud binary <= 30 % of ASCII", binary, 0.30),
        ("LOD1 Hausdorff error <= 0.5 % of the diagonal", lod1_error, 0.005),
        ("all of it in <= 90 s", whole["wall"], 90.0),
    ]
    print("\n## Targets")
    print("| target | measured | verdict |")
    print("|---|---|---|")
    for name, measured, bound in targets:
        print(f"| {name} | {measured:.4g} | {'holds' if measured <= bound else 'MISSES'} |")
    if args.big_ply_gb:
        big_ply(args.data, args.big_ply_gb)


if __name__ == "__main__":
    main()
