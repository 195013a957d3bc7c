"""Web delivery on the right-sizing bench data: 3D Tiles for the mesh, COPC + LAZ for the point cloud, what
they cost (seconds, peak RSS, bytes) and what a browser fetches for its first full view, against straight
conversions with gltfpack and py3dtiles run in the same run.

    python -m bench.web_delivery                  # data (once, cached), steps, baselines, first view, targets
    python -m bench.web_delivery --no-baselines   # our steps only

Data: bench/rightsize_data.py, scale "bench" (999,698 faces with UVs + an 8192 x 8192 PNG texture, 5,000,000
coloured points as ASCII PLY), cached in /tmp/e2e3d-bench-rightsize and shared with bench/rightsize.py. The
steps run on hard links of the originals in a scratch run folder, each in a fresh child process whose seconds
and peak RSS (``wait4``: the child and the bounded workers it waited for) are its own:

- ``mesh``: the lifecycle's ``right_size_mesh`` (LOD chain, LOD OBJs, then the self-contained web GLBs and
  the 3D Tiles tileset, written together by one bounded worker);
- ``pointcloud``: the lifecycle's ``right_size_pointcloud`` (binary PLY, voxel LODs, then COPC and LAZ).

Inside each, the parts are timed by wrapping the functions the step calls (:data:`TIMED`), so "tiling" is
the web-GLB-and-tiles worker and "COPC" the COPC-and-LAZ writer, as the lifecycle runs them.

Baselines (installed once into /tmp/e2e3d-bench-web, never into the project's environment): npm
``gltfpack@1.3.0`` (``-cc``: one meshopt GLB, the PNG carried as it is, no tiling) on the OBJ, and PyPI
``py3dtiles[ply]==12.1.1`` (it pins numpy < 2.4 and numba, so in a throwaway venv) converting the binary
PLY to a point tileset with ``--jobs 2``. Obj2Tiles (the OpenDroneMap tiler) needs .NET, absent here: its
published pipeline (decimate -> split with a MaxRects texture re-pack -> B3DM or glTF tileset, a fixed
``geometricError`` per level instead of a measured one) is described, not timed.

First view: the bytes the viewer page fetches before it shows the whole model, computed from the outputs by
the page's own rule (``first_view``): ``tileset.json``, the content of the tiles its screen-space-error
traversal selects at 1280 x 800 from the framing camera, the COPC file's first 64 KiB (what the ``copc``
reader asks for to walk the header and VLRs), the EVLR headers and the root hierarchy page, and the octree
nodes whose projected point spacing is above the page's pixel threshold within its point budget.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path("/tmp/e2e3d-bench-rightsize")
DEFAULT_CACHE = Path("/tmp/e2e3d-bench-web")
GLTFPACK = "gltfpack@1.3.0"
PY3DTILES = "py3dtiles[ply]==12.1.1"
MESH = "mesh/reconstructed_mesh.obj"
ORIGINALS = ("mesh/reconstructed_mesh.obj", "mesh/reconstructed_mesh.mtl", "textures/texture.png")
POINTCLOUD = "pointcloud/pointcloud.ply"


def measured(command: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``command`` to its end: its wall seconds, its peak RSS in MB (``wait4`` on its pid: the process
    and the children it waited for), its exit code and output."""
    began = time.perf_counter()
    out_path = DEFAULT_CACHE / f".out-{os.getpid()}"
    err_path = DEFAULT_CACHE / f".err-{os.getpid()}"
    DEFAULT_CACHE.mkdir(parents=True, exist_ok=True)
    with open(os.devnull, "rb") as stdin, open(out_path, "w") as out, open(err_path, "w") as err:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdin=stdin, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - began
    stdout, stderr = out_path.read_text(), err_path.read_text()
    out_path.unlink()
    err_path.unlink()
    return {
        "seconds": seconds,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "rc": process.returncode,
        "stdout": stdout,
        "stderr": stderr[-4000:],
    }


def _child(step: str, run_dir: Path) -> dict[str, Any]:
    """One of this module's steps in a fresh interpreter: its JSON result, seconds and peak RSS."""
    out = measured([sys.executable, "-m", "bench.web_delivery", "--child", step, "--run", str(run_dir)])
    if out["rc"]:
        raise SystemExit(f"step {step} failed:\n{out['stderr']}")
    result = json.loads(out["stdout"].strip().splitlines()[-1])
    result.update(seconds=out["seconds"], peak_rss_mb=out["peak_rss_mb"])
    return result


#: functions the steps call, timed inside the child by wrapping them (module, attribute, label); a missing one
#: (an older tree) is left out of the figures
TIMED = (
    ("e2e3d_provider.rightsize.mesh", "lod_chain", "chain"),
    ("e2e3d_provider.rightsize.delivery", "deliver", "web GLBs + tiles"),
    ("e2e3d_provider.rightsize.pointcloud", "to_binary", "binary PLY"),
    ("e2e3d_provider.rightsize.pointcloud", "voxel_downsample", "voxel LODs"),
    ("e2e3d_provider.rightsize.copc", "write_bounded", "COPC + LAZ"),
)


def _time_calls(spent: dict[str, float]) -> None:
    """Wrap the functions of :data:`TIMED` so each call adds its wall seconds to ``spent[label]``."""
    import functools
    import importlib

    for module_name, attribute, label in TIMED:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        function = getattr(module, attribute, None)
        if function is None:
            continue

        @functools.wraps(function)
        def timed(*args: Any, __function: Any = function, __label: str = label, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return __function(*args, **kwargs)
            finally:
                spent[__label] = spent.get(__label, 0.0) + time.perf_counter() - began

        setattr(module, attribute, timed)


def child(step: str, run_dir: Path) -> dict[str, Any]:
    """One measured step, inside the child: the lifecycle's own function on the run folder; returns the
    variants it recorded and the seconds of its parts (the parent adds the wall seconds and peak RSS)."""
    sys.path.insert(0, str(ROOT))
    from e2e3d_provider.core.variants import RightSizeRecord
    from e2e3d_provider.lifecycle.results import rightsize
    from e2e3d_provider.rightsize.policy import RightSizePolicy

    spent: dict[str, float] = {}
    _time_calls(spent)
    record = RightSizeRecord()
    began = time.perf_counter()
    if step == "mesh":
        rightsize.right_size_mesh(run_dir, MESH, RightSizePolicy(), record)
    elif step == "pointcloud":
        rightsize.right_size_pointcloud(run_dir, POINTCLOUD, RightSizePolicy(), record)
    else:
        raise SystemExit(f"unknown step {step}")
    spent["step"] = time.perf_counter() - began
    return {"variants": [v.__dict__ for v in record.variants], "spent": spent}


# -- the run folder and the baselines ---------------------------------------------------------------------


def fresh_run(data: Path, cache: Path) -> Path:
    """A scratch run folder holding hard links of the originals only (no variants of an earlier run)."""
    run = cache / "run"
    shutil.rmtree(run, ignore_errors=True)
    for rel in (*ORIGINALS, POINTCLOUD):
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(data / rel, run / rel)
    return run


def ensure_baselines(cache: Path) -> dict[str, Path]:
    """gltfpack (npm, wasm) and py3dtiles (a throwaway venv), each installed once into ``cache``."""
    tools = {"gltfpack": cache / "npm/node_modules/.bin/gltfpack", "py3dtiles": cache / "py3dtiles-venv/bin/py3dtiles"}
    if not tools["gltfpack"].exists():
        print(f"installing {GLTFPACK} into {cache / 'npm'} ...", flush=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(cache / "npm"), "--no-audit", "--no-fund", GLTFPACK], check=True
        )
    if not tools["py3dtiles"].exists():
        print(f"installing {PY3DTILES} into {cache / 'py3dtiles-venv'} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(cache / "py3dtiles-venv")], check=True)
        pip = cache / "py3dtiles-venv/bin/pip"
        subprocess.run([str(pip), "install", "-q", PY3DTILES], check=True)
    return tools


def folder_bytes(folder: Path) -> tuple[int, int]:
    """Files and bytes under ``folder``."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def run_baselines(run_dir: Path, cache: Path, binary_ply: Path) -> dict[str, dict[str, Any]]:
    """gltfpack on the OBJ (+ MTL + PNG) and py3dtiles on the binary PLY, timed, in this run."""
    tools = ensure_baselines(cache)
    out = cache / "baselines"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    results: dict[str, dict[str, Any]] = {}
    glb = out / "gltfpack.glb"
    r = measured([str(tools["gltfpack"]), "-i", str(run_dir / MESH), "-o", str(glb), "-cc"], cwd=out)
    if r["rc"]:
        raise SystemExit(f"gltfpack failed:\n{r['stderr']}")
    results["gltfpack"] = {**r, "files": 1, "bytes": glb.stat().st_size}
    tiles = out / "py3dtiles"
    r = measured(
        [str(tools["py3dtiles"]), "convert", str(binary_ply), "--out", str(tiles), "--jobs", "2", "--overwrite"],
        cwd=out,
    )
    if r["rc"]:
        raise SystemExit(f"py3dtiles failed:\n{r['stderr']}")
    files, size = folder_bytes(tiles)
    results["py3dtiles"] = {**r, "files": files, "bytes": size}
    return results


# -- the first view ---------------------------------------------------------------------------------------

#: what the viewer page (e2e3d_provider/api/static/viewer.js) does on its first view
VIEWER = {
    "width": 1280,
    "height": 800,
    "fov": 50.0,  # degrees, vertical
    "error_target": 16.0,  # 3d-tiles-renderer's default errorTarget, pixels
    "copc_head": 65536,  # the copc reader's first range: header + VLRs, sliced locally afterwards
    "point_px": 2.0,  # load a COPC node while its projected point spacing exceeds this many pixels
    "point_budget": 1_500_000,
}


def _box_z_up_to_y_up(box: list[float]) -> tuple[list[float], list[float]]:
    """Centre and half sizes of an axis-aligned 3D Tiles box (z-up) in the glTF/OBJ frame (y-up): the
    viewer turns the tiles' group by -90 degrees about x, (x, y, z) -> (x, z, -y)."""
    cx, cy, cz = box[0:3]
    hx, hy, hz = (abs(box[3 + i]) + abs(box[6 + i]) + abs(box[9 + i]) for i in range(3))
    return [cx, cz, -cy], [hx, hz, hy]


def _distance_to_box(eye: list[float], centre: list[float], half: list[float]) -> float:
    d = [max(0.0, abs(e - c) - h) for e, c, h in zip(eye, centre, half, strict=True)]
    return math.sqrt(sum(x * x for x in d))


def camera(tileset: dict[str, Any] | None, cube: list[float] | None) -> tuple[list[float], float]:
    """The framing camera: the union of the root box and the COPC cube seen whole, ``distance = radius /
    sin(fov / 2)`` from the centre; returns (eye, distance)."""
    lows, highs = [], []
    if tileset is not None:
        centre, half = _box_z_up_to_y_up(tileset["root"]["boundingVolume"]["box"])
        lows.append([c - h for c, h in zip(centre, half, strict=True)])
        highs.append([c + h for c, h in zip(centre, half, strict=True)])
    if cube is not None:
        lows.append([c - cube[3] for c in cube[:3]])
        highs.append([c + cube[3] for c in cube[:3]])
    lo = [min(v[i] for v in lows) for i in range(3)]
    hi = [max(v[i] for v in highs) for i in range(3)]
    centre = [(a + b) / 2 for a, b in zip(lo, hi, strict=True)]
    radius = math.dist(lo, hi) / 2
    distance = radius / math.sin(math.radians(VIEWER["fov"]) / 2)
    slant = [0.55, 0.75, 0.9]  # from above at a slant, as frameAll() in viewer.js places it
    direction = [v / math.hypot(*slant) for v in slant]
    return [c + distance * d for c, d in zip(centre, direction, strict=True)], distance


def _pixels(error: float, distance: float) -> float:
    """3d-tiles-renderer's screen-space error: geometricError / (distance * 2 tan(fov/2) / height)."""
    if distance == 0:
        return math.inf
    return error * VIEWER["height"] / (distance * 2 * math.tan(math.radians(VIEWER["fov"]) / 2))


def first_view_tiles(tileset_path: Path, eye: list[float]) -> tuple[list[str], int]:
    """Content URIs 3d-tiles-renderer loads from ``eye`` and their bytes plus the tileset's: every tile the
    traversal uses, that is the root and, below a tile whose screen-space error is above the target, all its
    children (``loadSiblings``), the refined ones included (``loadAncestors``, both on by default: a parent is
    kept as the fallback while its children load)."""
    tileset = json.loads(tileset_path.read_text())
    used: list[str] = []

    def visit(tile: dict[str, Any]) -> None:
        if "content" in tile:
            used.append(tile["content"]["uri"])
        centre, half = _box_z_up_to_y_up(tile["boundingVolume"]["box"])
        if _pixels(tile["geometricError"], _distance_to_box(eye, centre, half)) > VIEWER["error_target"]:
            for child_tile in tile.get("children") or []:
                visit(child_tile)

    visit(tileset["root"])
    size = tileset_path.stat().st_size + sum((tileset_path.parent / uri).stat().st_size for uri in used)
    return used, size


def copc_layout(path: Path) -> dict[str, Any]:
    """The COPC file's info VLR, EVLR headers and hierarchy (read here by hand, per the COPC 1.0 spec)."""
    with open(path, "rb") as f:
        head = f.read(375)
        points_offset, vlr_count = struct.unpack_from("<IHI", head, 96)[0], struct.unpack_from("<I", head, 100)[0]
        evlr_start, evlr_count = struct.unpack_from("<QI", head, 235)
        f.seek(375 + 54)
        cx, cy, cz, half, spacing, page_offset, page_size = struct.unpack("<5d2Q", f.read(56))
        evlrs = []
        at = evlr_start
        for _ in range(evlr_count):
            f.seek(at)
            _reserved, user, record, length = struct.unpack("<H16sHQ", f.read(28))
            evlrs.append((at, 60, user.rstrip(b"\0").decode(), record, length))
            at += 60 + length
        # key -> (offset, bytes, points, offset and size of the hierarchy page that lists it)
        nodes: dict[tuple[int, int, int, int], tuple[int, int, int, int, int]] = {}
        pages = [(page_offset, page_size)]
        while pages:
            offset, size = pages.pop()
            f.seek(offset)
            data = f.read(size)
            for i in range(0, size, 32):
                d, x, y, z, node_offset, byte_size, count = struct.unpack_from("<4iQii", data, i)
                if count == -1:
                    pages.append((node_offset, byte_size))
                elif count > 0:
                    nodes[(d, x, y, z)] = (node_offset, byte_size, count, offset, size)
    return {
        "points_offset": points_offset,
        "vlrs": vlr_count,
        "cube": [cx, cy, cz, half],
        "spacing": spacing,
        "root_page": (page_offset, page_size),
        "evlrs": evlrs,
        "nodes": nodes,
        "size": path.stat().st_size,
    }


def first_view_copc(layout: dict[str, Any], eye: list[float]) -> tuple[list[tuple[int, int, int, int]], int]:
    """Nodes viewer.js's ``wantedNodes`` loads from ``eye`` and the bytes fetched: the ``copc`` reader's head
    range, the EVLR headers past it, the root hierarchy page and the nodes. Nodes are taken largest projected
    point spacing first, the root always; a node's children are candidates while its own spacing is above
    ``point_px``; the walk stops at the point budget. (The page also skips nodes outside the view: none are
    from the framing camera, which sees the whole cube.)"""
    cx, cy, cz, half = layout["cube"]
    nodes = layout["nodes"]

    def spacing_px(key: tuple[int, int, int, int]) -> float:
        d, x, y, z = key
        size = 2 * half / 2**d
        centre = [cx - half + (x + 0.5) * size, cy - half + (y + 0.5) * size, cz - half + (z + 0.5) * size]
        return _pixels(layout["spacing"] / 2**d, _distance_to_box(eye, centre, [size / 2] * 3))

    loaded: list[tuple[int, int, int, int]] = []
    points = 0
    queue: list[tuple[float, tuple[int, int, int, int]]] = [(math.inf, (0, 0, 0, 0))]
    while queue:
        queue.sort(key=lambda item: -item[0])
        _, key = queue.pop(0)
        if key not in nodes:
            continue
        if loaded and points + nodes[key][2] > VIEWER["point_budget"]:
            break
        loaded.append(key)
        points += nodes[key][2]
        if spacing_px(key) <= VIEWER["point_px"]:
            continue
        d, x, y, z = key
        for i in range(8):
            child_key = (d + 1, 2 * x + (i & 1), 2 * y + ((i >> 1) & 1), 2 * z + ((i >> 2) & 1))
            if child_key in nodes:
                queue.append((spacing_px(child_key), child_key))
    size = min(VIEWER["copc_head"], layout["size"])
    size += sum(60 for at, *_ in layout["evlrs"] if at + 60 > VIEWER["copc_head"])
    pages = {nodes[key][3]: nodes[key][4] for key in loaded} | {layout["root_page"][0]: layout["root_page"][1]}
    size += sum(pages.values())  # the root page and the child pages listing a loaded node
    size += sum(nodes[key][1] for key in loaded)
    return loaded, size


# -- the report -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="where the bench data is made and kept")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="run folder and baseline installs")
    parser.add_argument("--no-baselines", action="store_true", help="skip gltfpack and py3dtiles")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.run), default=str))
        return
    sys.path.insert(0, str(ROOT))
    from bench.rightsize import ensure_data

    counts = ensure_data(args.data)
    run = fresh_run(args.data, args.cache)
    originals = {rel: (run / rel).stat().st_size for rel in (*ORIGINALS, POINTCLOUD)}
    total = sum(originals.values())
    print(f"data: {counts['faces']:,} faces, {counts['pixels']:,} pixels, {counts['points']:,} points")
    print(f"originals: {total:,} bytes ({', '.join(f'{k} {v:,}' for k, v in originals.items())})")
    steps = {name: _child(name, run) for name in ("mesh", "pointcloud")}
    baselines = {} if args.no_baselines else run_baselines(run, args.cache, run / "pointcloud/lod0/pointcloud.ply")
    report(run, originals, steps, baselines)


def _mb(value: float) -> str:
    return f"{value / 1e6:,.1f} MB"


def report(
    run: Path, originals: dict[str, int], steps: dict[str, dict[str, Any]], baselines: dict[str, dict[str, Any]]
) -> None:
    """Print the markdown tables: steps, outputs, baselines, first view, targets."""
    total = sum(originals.values())
    mesh_bytes = sum(v for k, v in originals.items() if k != POINTCLOUD)
    cloud_bytes = originals[POINTCLOUD]
    variants = [v for step in steps.values() for v in step["variants"]]
    fmt = lambda v: v["figures"].get("format")  # noqa: E731
    tileset = next((v for v in variants if fmt(v) == "3dtiles"), None)
    tiles = [v for v in variants if fmt(v) == "3dtiles-tile"]
    copc = next((v for v in variants if fmt(v) == "copc"), None)
    laz = next((v for v in variants if fmt(v) == "laz"), None)
    glbs = sorted((v for v in variants if v["role"] == "web" and v["path"].endswith(".glb")), key=lambda v: v["level"])

    print("\n## Steps (each in a fresh process; seconds are wall time on the shared 2-core machine)")
    print("| step | part | seconds | peak RSS MB |")
    print("|---|---|---|---|")
    for name, result in steps.items():
        seconds, peak = result["seconds"], result["peak_rss_mb"]
        print(f"| {name} | whole step (process, imports included) | {seconds:.1f} | {peak:.0f} |")
        for label, seconds in result["spent"].items():
            if label != "step":
                print(f"| | {label} | {seconds:.1f} | |")

    print("\n## Outputs against the originals")
    print("| output | files | bytes | of its originals |")
    print("|---|---|---|---|")
    print(f"| originals: OBJ + MTL + PNG | 3 | {mesh_bytes:,} | 1.000 |")
    print(f"| originals: ASCII PLY | 1 | {cloud_bytes:,} | 1.000 |")
    for glb in glbs:
        f = glb["figures"]
        what = f"web GLB lod{glb['level']} ({f.get('faces', 0):,} faces, {f.get('compression')}"
        what += f", texture {f.get('texture')})"
        print(f"| {what} | 1 | {f['bytes']:,} | {f['bytes'] / mesh_bytes:.4f} |")
    if tileset is not None:
        tile_bytes = sum(t["figures"]["bytes"] for t in tiles) + tileset["figures"]["bytes"]
        depth = tileset["figures"].get("depth")
        what = f"3D Tiles: tileset.json + {len(tiles)} tiles, depth {depth}"
        print(f"| {what} | {len(tiles) + 1} | {tile_bytes:,} | {tile_bytes / mesh_bytes:.4f} |")
        for level in sorted({t["level"] for t in tiles}, reverse=True):
            at = [t["figures"] for t in tiles if t["level"] == level]
            errors = [f.get("geometric_error", 0.0) for f in at]
            print(
                f"| &nbsp; tiles of lod{level}: {sum(f['faces'] for f in at):,} faces, geometricError "
                f"{min(errors):.3g}..{max(errors):.3g} | {len(at)} | {sum(f['bytes'] for f in at):,} | |"
            )
    for name, v in (("COPC", copc), ("LAZ (lod0)", laz)):
        if v is not None:
            f = v["figures"]
            extra = (
                f", {f.get('nodes', 0):,} nodes, depth {f.get('depth')}"
                if name == "COPC"
                else f", scale {f.get('scale')}"
            )
            print(f"| {name}: {f['points']:,} points{extra} | 1 | {f['bytes']:,} | {f['bytes'] / cloud_bytes:.4f} |")

    if baselines:
        print("\n## Baselines, same run (fresh processes)")
        print("| tool | what | seconds | peak RSS MB | files | bytes | of its originals |")
        print("|---|---|---|---|---|---|---|")
        b = baselines["gltfpack"]
        print(
            "| gltfpack 1.3.0 `-cc` | OBJ -> one meshopt GLB, the 8k PNG carried as is, no tiling "
            f"| {b['seconds']:.1f} "
            f"| {b['peak_rss_mb']:.0f} | 1 | {b['bytes']:,} | {b['bytes'] / mesh_bytes:.4f} |"
        )
        b = baselines["py3dtiles"]
        print(
            "| py3dtiles 12.1.1 `convert --jobs 2` | binary PLY -> point tileset (pnts, uncompressed) "
            f"| {b['seconds']:.1f} "
            f"| {b['peak_rss_mb']:.0f} | {b['files']:,} | {b['bytes']:,} | {b['bytes'] / cloud_bytes:.4f} |"
        )
        print(
            "| Obj2Tiles (OpenDroneMap) | not run: needs .NET, absent here; published pipeline: decimate -> split "
            "(MaxRects texture re-pack) -> tileset, a fixed geometricError per level | | | | | |"
        )

    rows: list[tuple[str, int]] = []
    tileset_json = run / tileset["path"] if tileset else None
    layout = copc_layout(run / copc["path"]) if copc else None
    if tileset_json is None and layout is None:
        print("\nno tileset and no COPC file: nothing to view")
        return
    root = json.loads(tileset_json.read_text()) if tileset_json else None
    eye, _distance = camera(root, layout["cube"] if layout else None)
    if tileset_json is not None:
        drawn, size = first_view_tiles(tileset_json, eye)
        rows.append((f"tileset.json + {len(drawn)} tile(s): {', '.join(drawn)}", size))
    if layout is not None:
        loaded, size = first_view_copc(layout, eye)
        points = sum(layout["nodes"][key][2] for key in loaded)
        depth = max((key[0] for key in loaded), default=0)
        rows.append(
            (f"COPC: head range, hierarchy page, {len(loaded)} nodes to depth {depth} ({points:,} points)", size)
        )
    first = sum(size for _, size in rows)
    print("\n## First full view (computed from the outputs by the viewer's rule, 1280 x 800)")
    print("| fetched | bytes | of the originals |")
    print("|---|---|---|")
    for what, size in rows:
        print(f"| {what} | {size:,} | {size / total:.4f} |")
    print(f"| **all** (originals: OBJ + MTL + PNG + PLY, {total:,}) | **{first:,}** | **{first / total:.4f}** |")
    if baselines:
        glb = baselines["gltfpack"]["bytes"]
        what = "baseline: gltfpack's one GLB, fetched whole before anything shows (mesh only)"
        print(f"| {what} | {glb:,} | {glb / total:.4f} |")

    tiling = steps["mesh"]["spent"].get("web GLBs + tiles", math.nan)
    copc_seconds = steps["pointcloud"]["spent"].get("COPC + LAZ", math.nan)
    peak = max(step["peak_rss_mb"] for step in steps.values())
    targets = [
        ("first view <= 5 % of the originals' bytes", f"{first / total:.2%}", first / total <= 0.05),
        (
            "tiling and COPC together <= 60 s (web GLBs + tiles worker, COPC + LAZ)",
            f"{tiling:.1f} + {copc_seconds:.1f} = {tiling + copc_seconds:.1f} s",
            tiling + copc_seconds <= 60,
        ),
        ("peak RSS < 1.5 GB (largest step)", f"{peak:,.0f} MB", peak < 1536),
    ]
    print("\n## Targets")
    print("| target | measured | verdict |")
    print("|---|---|---|")
    for name, measured_value, holds in targets:
        print(f"| {name} | {measured_value} | {'holds' if holds else 'MISSES'} |")


if __name__ == "__main__":
    main()
