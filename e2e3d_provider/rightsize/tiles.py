"""A mesh's level-of-detail chain as a 3D Tiles 1.1 tileset: the root holds the coarsest level of the whole
model, each depth below splits space (a quadtree or an octree over the model's box) and holds the next finer
level, down to the original at the leaves. Pure functions over arrays and files; no Airflow.

- Split axes: those whose extent is at least :data:`SPLIT_SHARE` of the largest (a terrain: a quadtree; a
  compact object: an octree). A depth has 2^k cells per split axis, k the smallest that puts at most
  ``tile_faces`` faces in a cell on average, growing by at most one per depth (the tree refines gradually).
- Each triangle goes whole to the cell of its centroid: no triangle is cut, and a tile's triangles may
  reach a little past its cell (its bounding volume is that of its content, so it still contains them).
- ``geometricError`` is measured, not guessed: the largest of the simplification error samples
  (:func:`.mesh.surface_samples`: points on either surface with their distance to the other one) that fall
  in the tile's cell; a cell with none takes its level's largest. Leaves (the original) are 0. A tile's error
  is at least its children's (sampling can give a child's cell a larger local maximum than its parent's), so
  errors never increase with depth; both the raw measured value and the one used are recorded.
- Frames: glTF content stays y-up in the OBJ's own coordinates; 3D Tiles is z-up and clients rotate glTF
  content by +90 degrees about x, so every bounding box is computed on (x, -z, y). A tile's box contains
  its content's box and its children's boxes.
- Every tile is a self-contained GLB (:mod:`.gltf`): normals, its own re-packed texture (:mod:`.atlas`),
  meshopt compression.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from e2e3d_provider.rightsize.atlas import repack
from e2e3d_provider.rightsize.gltf import GlbMesh, write_glb

#: an axis is split when its extent is at least this share of the largest extent
SPLIT_SHARE = 0.25
#: bounding boxes are grown by this share of the model's diagonal (quantized positions and float32 readers)
BOX_MARGIN = 1e-5


@dataclass
class TileLevel:
    """One level of the chain as the tiler takes it: the mesh (level 0 = the original), its unit normals,
    and the error samples it was measured on ((N, 4): x, y, z, distance; empty for level 0)."""

    positions: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray | None
    normals: np.ndarray
    samples: np.ndarray


@dataclass
class Tile:
    """One tile: its depth and cell, what it holds, and its figures once written."""

    depth: int
    key: tuple[int, ...]
    level: int
    faces: np.ndarray | None = None  # indices into the level's faces
    box: np.ndarray | None = None  # z-up (lo, hi), (2, 3)
    content_box: np.ndarray | None = None
    uri: str | None = None
    measured: float = 0.0
    samples: int = 0
    error: float = 0.0
    children: list[Tile] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


def z_up(points: np.ndarray) -> np.ndarray:
    """glTF's y-up coordinates as 3D Tiles' z-up ones: (x, y, z) -> (x, -z, y)."""
    return np.column_stack([points[:, 0], -points[:, 2], points[:, 1]])


def split_axes(extent: np.ndarray) -> list[int]:
    """The axes (of the mesh's own frame) the tree splits: those at least :data:`SPLIT_SHARE` of the largest."""
    return [axis for axis in range(3) if extent[axis] >= SPLIT_SHARE * extent.max() and extent[axis] > 0]


def grid_exponents(face_counts: list[int], axes: int, tile_faces: int) -> list[int]:
    """Per depth (0 = the root), k such that the depth has 2^k cells per split axis: the root is one cell,
    each depth below the smallest k giving at most ``tile_faces`` faces a cell on average, but never fewer
    than its parent depth's and at most one more."""
    exponents = [0]
    for faces in face_counts[1:]:
        need = 0
        while faces / (2 ** (axes * need)) > tile_faces and need < 16:
            need += 1
        exponents.append(min(exponents[-1] + 1, max(exponents[-1], need)))
    return exponents


def cells(points: np.ndarray, lo: np.ndarray, extent: np.ndarray, axes: list[int], k: int) -> np.ndarray:
    """The cell (one column per split axis) of each point in a grid of 2^k cells per axis over the box."""
    if not axes:
        return np.zeros((len(points), 0), dtype=np.int64)
    count = 2**k
    scaled = (points[:, axes] - lo[axes]) / extent[axes] * count
    return np.clip(np.floor(scaled), 0, count - 1).astype(np.int64)


def _box_of(points: np.ndarray, margin: float) -> np.ndarray:
    up = z_up(points)
    return np.array([up.min(axis=0) - margin, up.max(axis=0) + margin])


def box_json(box: np.ndarray) -> list[float]:
    """A (lo, hi) box as 3D Tiles' ``boundingVolume.box``: centre, then the three half-axis vectors."""
    centre, half = (box[0] + box[1]) / 2, (box[1] - box[0]) / 2
    return [*centre.tolist(), float(half[0]), 0.0, 0.0, 0.0, float(half[1]), 0.0, 0.0, 0.0, float(half[2])]


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    """``image`` as a baseline JPEG (what every glTF reader decodes)."""
    out = io.BytesIO()
    (image if image.mode in ("RGB", "L") else image.convert("RGB")).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def build_tileset(
    levels: list[TileLevel],
    out_dir: Path,
    *,
    image: Image.Image | None,
    tile_faces: int,
    texture_size: int,
    quality: int = 85,
    compression: str = "meshopt",
) -> dict[str, Any]:
    """Write the tileset of ``levels`` (level 0 the original, the last the coarsest) into ``out_dir``:
    ``tileset.json`` and ``<depth>/<i>_<j>[_<k>].glb`` per tile. ``image`` is the texture the levels' UVs
    map (or None). Returns the tileset's figures, with ``"tiles"``: the list of written tiles'
    ``{"uri", "level", ...figures}``."""
    top = len(levels) - 1
    full = levels[0].positions
    lo, hi = full.min(axis=0), full.max(axis=0)
    extent = np.where(hi > lo, hi - lo, 1.0)
    diagonal = float(np.linalg.norm(hi - lo)) or 1.0
    margin = BOX_MARGIN * diagonal
    axes = split_axes(hi - lo)
    exponents = grid_exponents([len(levels[top - d].faces) for d in range(top + 1)], len(axes), tile_faces)

    # which faces go where: the cell of each face's centroid, depth by depth
    by_depth: list[dict[tuple[int, ...], Tile]] = []
    for depth in range(top + 1):
        level = levels[top - depth]
        centroids = level.positions[level.faces].mean(axis=1)
        keys = cells(centroids, lo, extent, axes, exponents[depth])
        tiles: dict[tuple[int, ...], Tile] = {}
        if len(keys):
            unique, inverse = np.unique(keys, axis=0, return_inverse=True)
            order = np.argsort(inverse.ravel(), kind="stable")
            bounds = np.searchsorted(inverse.ravel()[order], np.arange(len(unique) + 1))
            for index, key in enumerate(map(tuple, unique.tolist())):
                tiles[key] = Tile(depth, key, top - depth, faces=order[bounds[index] : bounds[index + 1]])
        by_depth.append(tiles)
    # every tile's parent exists (a cell of a coarser level may hold no centroid: it is then a tile without content)
    for depth in range(top, 0, -1):
        shift = exponents[depth] - exponents[depth - 1]
        for key, tile in by_depth[depth].items():
            parent_key = tuple(v >> shift for v in key)
            parent = by_depth[depth - 1].setdefault(parent_key, Tile(depth - 1, parent_key, top - depth + 1))
            parent.children.append(tile)

    contents: list[Tile] = []
    for depth in range(top, -1, -1):  # leaves first: a tile's box and error take in its children's
        level = levels[top - depth]
        for tile in sorted(by_depth[depth].values(), key=lambda t: t.key):
            tile.children.sort(key=lambda t: t.key)
            if tile.faces is not None and len(tile.faces):
                _write_content(tile, level, out_dir, image, texture_size, quality, compression, margin)
                contents.append(tile)
            boxes = [b for b in [tile.content_box, *(c.box for c in tile.children)] if b is not None]
            tile.box = np.array([np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)])
            tile.measured, tile.samples = _measured(level, lo, extent, axes, exponents[depth], tile.key)
            tile.error = max([tile.measured, *(c.error for c in tile.children)])
            tile.figures.update(geometric_error=tile.error, measured_error=tile.measured, samples=tile.samples)
    contents.sort(key=lambda t: (t.depth, t.key))
    written = [{"uri": t.uri, "level": t.level, "depth": t.depth, **t.figures} for t in contents]
    root = by_depth[0][tuple(0 for _ in axes)]
    tileset = {
        "asset": {"version": "1.1", "generator": "e2e3d-provider right-sizing"},
        "geometricError": max(diagonal, root.error),
        "root": _tile_json(root, root=True),
    }
    path = out_dir / "tileset.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tileset, indent=1) + "\n")
    assert root.box is not None
    return {
        "format": "3dtiles",
        "tiles": written,
        "depth": top,
        "geometric_error": tileset["geometricError"],
        "box": box_json(root.box),
        "bytes": path.stat().st_size,
    }


def _measured(
    level: TileLevel, lo: np.ndarray, extent: np.ndarray, axes: list[int], k: int, key: tuple[int, ...]
) -> tuple[float, int]:
    """The largest error sample of ``level`` in the cell ``key`` (and how many there are); the level's
    largest when the cell holds none; 0 for the original."""
    if not len(level.samples):
        return 0.0, 0
    inside = np.all(cells(level.samples[:, :3], lo, extent, axes, k) == np.array(key, dtype=np.int64), axis=1)
    count = int(inside.sum())
    values = level.samples[inside, 3] if count else level.samples[:, 3]
    return float(values.max()), count


def _write_content(
    tile: Tile,
    level: TileLevel,
    out_dir: Path,
    image: Image.Image | None,
    texture_size: int,
    quality: int,
    compression: str,
    margin: float,
) -> None:
    """The tile's GLB: its faces over their own vertices, normals of the whole level, its texture re-packed."""
    assert tile.faces is not None
    used, local = np.unique(level.faces[tile.faces], return_inverse=True)
    local = local.reshape(-1, 3)
    positions, normals = level.positions[used], level.normals[used]
    uvs = level.uvs[used] if level.uvs is not None else None
    texture, texture_px = None, 0
    if image is not None and uvs is not None:
        atlas = repack(image, local, uvs, texture_size)
        uvs, texture = atlas.uvs, jpeg_bytes(atlas.image, quality)
        texture_px = atlas.image.width * atlas.image.height
    tile.uri = f"{tile.depth}/{'_'.join(str(v) for v in tile.key) or '0'}.glb"
    size = write_glb(
        GlbMesh(positions, local, uvs, normals), out_dir / tile.uri, texture=texture, compression=compression
    )
    tile.content_box = _box_of(positions, margin)
    tile.figures = {
        "format": "3dtiles-tile",
        "faces": len(local),
        "vertices": len(used),
        "texture_px": texture_px,
        "compression": compression,
        "bytes": size,
    }


def _tile_json(tile: Tile, root: bool = False) -> dict[str, Any]:
    assert tile.box is not None
    out: dict[str, Any] = {"boundingVolume": {"box": box_json(tile.box)}, "geometricError": tile.error}
    if root:
        out["refine"] = "REPLACE"
    if tile.uri is not None:
        assert tile.content_box is not None
        out["content"] = {"uri": tile.uri, "boundingVolume": {"box": box_json(tile.content_box)}}
    if tile.children:
        out["children"] = [_tile_json(child) for child in tile.children]
    return out
