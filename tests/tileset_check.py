"""An independent reader of a 3D Tiles 1.1 tileset of glTF content (json + pygltflib + meshoptimizer's
decoders; nothing of the writer is imported): what a viewer relies on, checked file by file.

- ``asset.version`` is 1.1, the root says how it refines, the tileset's error is at least the root's;
- every content URI resolves to a file inside the tileset's folder; no GLB in the folder is left unnamed;
- every child's bounding box lies inside its parent's;
- every content's vertices (decoded, dequantized, through its nodes' transforms, turned from glTF's y-up to
  3D Tiles' z-up frame) lie inside its tile's box and its content box;
- geometric errors never increase with depth, and leaves are 0.

:func:`check_tileset` returns the problems found (an empty list: none); :func:`read_positions` and
:func:`accessor` read a GLB's data, meshopt-compressed or not.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any

import meshoptimizer
import numpy as np
import pygltflib

#: numpy type of each glTF component type
COMPONENTS = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
WIDTHS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}
#: how far (a share of the root box's largest half-size) a point may stray outside a box: float rounding
TOLERANCE = 1e-6


def view_bytes(gltf: pygltflib.GLTF2, index: int) -> tuple[bytes, int | None]:
    """A buffer view's bytes, decoded when EXT_meshopt_compression holds them, and its byte stride."""
    view = gltf.bufferViews[index]
    blob = gltf.binary_blob()
    meshopt = (view.extensions or {}).get("EXT_meshopt_compression")
    if meshopt is None:
        start = view.byteOffset or 0
        return blob[start : start + view.byteLength], view.byteStride
    start = meshopt.get("byteOffset", 0)
    data = blob[start : start + meshopt["byteLength"]]
    count, stride = meshopt["count"], meshopt["byteStride"]
    if meshopt["mode"] == "ATTRIBUTES":
        # no dtype: with one, this binding allocates count items of it, not count x stride bytes
        raw = np.ascontiguousarray(meshoptimizer.decode_vertex_buffer(count, stride, data)).tobytes()
    elif meshopt["mode"] == "TRIANGLES":
        # the binding hands back a uint32 array whose first count x stride bytes are the decoded indices
        decoded = np.ascontiguousarray(meshoptimizer.decode_index_buffer(count, stride, data))
        raw = decoded.view(np.uint8)[: count * stride].tobytes()
    else:
        raise ValueError(f"meshopt mode {meshopt['mode']} is not read here")
    assert meshopt.get("filter", "NONE") == "NONE", "meshopt filters are not read here"
    assert len(raw) == count * stride, f"meshopt stream of view {index} decodes to {len(raw)} bytes"
    return raw, view.byteStride or (stride if meshopt["mode"] == "ATTRIBUTES" else None)


def accessor(gltf: pygltflib.GLTF2, index: int, dequantize: bool = True) -> np.ndarray:
    """An accessor's values (count, width): strided reads; normalized integers as floats in [-1, 1] (with
    ``dequantize``), other integers as they are stored, floats as float64."""
    acc = gltf.accessors[index]
    dtype = np.dtype(COMPONENTS[acc.componentType])
    width = WIDTHS[acc.type]
    data, stride = view_bytes(gltf, acc.bufferView)
    stride = stride or dtype.itemsize * width
    offset = acc.byteOffset or 0
    rows = np.frombuffer(data, dtype=np.uint8)[offset : offset + stride * (acc.count - 1) + dtype.itemsize * width]
    padded = np.zeros(stride * acc.count, dtype=np.uint8)
    padded[: len(rows)] = rows
    values = padded.reshape(acc.count, stride)[:, : dtype.itemsize * width].copy().view(dtype).reshape(acc.count, width)
    if acc.normalized and dequantize:
        info = np.iinfo(dtype)
        return np.maximum(values.astype(np.float64) / info.max, -1.0)
    return values.astype(np.float64) if dtype == np.float32 else values


def _node_matrix(node: pygltflib.Node) -> np.ndarray:
    if node.matrix:
        return np.array(node.matrix, dtype=np.float64).reshape(4, 4).T  # glTF: column-major
    t = np.array(node.translation or [0, 0, 0], dtype=np.float64)
    x, y, z, w = node.rotation or [0, 0, 0, 1]
    r = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    s = np.array(node.scale or [1, 1, 1], dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = r * s
    m[:3, 3] = t
    return m


def read_positions(path: Path) -> np.ndarray:
    """Every vertex position of a GLB's default scene, in its scene's frame (node transforms applied)."""
    gltf = pygltflib.GLTF2.load_binary(path)
    out: list[np.ndarray] = []

    def walk(index: int, parent: np.ndarray) -> None:
        node = gltf.nodes[index]
        matrix = parent @ _node_matrix(node)
        if node.mesh is not None:
            for primitive in gltf.meshes[node.mesh].primitives:
                local = accessor(gltf, primitive.attributes.POSITION).astype(np.float64)
                out.append(local @ matrix[:3, :3].T + matrix[:3, 3])
        for child in node.children or []:
            walk(child, matrix)

    for root in gltf.scenes[gltf.scene or 0].nodes:
        walk(root, np.eye(4))
    return np.vstack(out) if out else np.zeros((0, 3))


def _box(values: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """A ``boundingVolume.box``: its centre and its three half-axis vectors (rows)."""
    array = np.array(values, dtype=np.float64)
    return array[:3], array[3:].reshape(3, 3)


def _outside(points: np.ndarray, box: list[float], tolerance: float) -> int:
    """How many points lie outside the box (beyond ``tolerance`` along any of its axes)."""
    centre, axes = _box(box)
    out = np.zeros(len(points), dtype=bool)
    for axis in axes:
        length = np.linalg.norm(axis)
        reach = np.abs((points - centre) @ axis) / max(length, 1e-300)
        out |= reach > length + tolerance
    return int(out.sum())


def _corners(box: list[float]) -> np.ndarray:
    centre, axes = _box(box)
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    return centre + signs @ axes


def check_tileset(path: Path) -> list[str]:
    """The problems of the tileset at ``path`` (see the module); an empty list when there are none."""
    problems: list[str] = []
    folder = path.parent.resolve()
    tileset = json.loads(path.read_text())
    if tileset.get("asset", {}).get("version") != "1.1":
        problems.append(f"asset.version is {tileset.get('asset', {}).get('version')!r}, not '1.1'")
    root = tileset["root"]
    if root.get("refine") not in ("REPLACE", "ADD"):
        problems.append("the root says neither REPLACE nor ADD refinement")
    if tileset["geometricError"] < root["geometricError"]:
        problems.append("the tileset's geometricError is less than its root's")
    _, root_axes = _box(root["boundingVolume"]["box"])
    tolerance = TOLERANCE * float(np.abs(root_axes).max())
    named: set[Path] = set()

    def visit(tile: dict[str, Any], where: str, depth: int) -> None:
        box = tile["boundingVolume"]["box"]
        children = tile.get("children", [])
        if not children and tile["geometricError"] != 0:
            problems.append(f"{where}: a leaf with geometricError {tile['geometricError']}, not 0")
        content = tile.get("content")
        if content is not None:
            uri = content["uri"]
            if "://" in uri or uri.startswith("/") or posixpath.normpath(uri).startswith(".."):
                problems.append(f"{where}: content uri {uri!r} leaves the tileset's folder")
            else:
                file = (folder / uri).resolve()
                if not file.is_relative_to(folder) or not file.is_file():
                    problems.append(f"{where}: content uri {uri!r} does not resolve to a file in the folder")
                else:
                    named.add(file)
                    points = read_positions(file)
                    up = np.column_stack([points[:, 0], -points[:, 2], points[:, 1]])  # glTF y-up -> z-up
                    if outside := _outside(up, box, tolerance):
                        problems.append(f"{where}: {outside} vertices of {uri} lie outside the tile's box")
                    content_box = content.get("boundingVolume", {}).get("box")
                    if content_box and (outside := _outside(up, content_box, tolerance)):
                        problems.append(f"{where}: {outside} vertices of {uri} lie outside its content box")
        for index, child in enumerate(children):
            place = f"{where}/children/{index}"
            if _outside(_corners(child["boundingVolume"]["box"]), box, tolerance):
                problems.append(f"{place}: its box is not inside its parent's")
            if child["geometricError"] > tile["geometricError"]:
                problems.append(
                    f"{place}: geometricError {child['geometricError']} exceeds its parent's {tile['geometricError']}"
                )
            visit(child, place, depth + 1)

    visit(root, "root", 0)
    for glb in sorted(folder.rglob("*.glb")):
        if glb.resolve() not in named:
            problems.append(f"{glb.relative_to(folder)} is in the tileset's folder but no tile names it")
    return problems


def walk_tiles(tileset: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """Every tile of a tileset's JSON with its depth (the root is 0), parents first."""
    out: list[tuple[int, dict[str, Any]]] = []
    stack = [(0, tileset["root"])]
    while stack:
        depth, tile = stack.pop(0)
        out.append((depth, tile))
        stack.extend((depth + 1, child) for child in tile.get("children", []))
    return out
