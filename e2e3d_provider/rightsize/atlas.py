"""Per-tile texture re-packing: the part of a mesh's texture one 3D Tiles tile samples, as a small texture
of its own, with the tile's UVs remapped onto it. Pure functions over arrays and Pillow images; no Airflow.

A tile's faces sample one or more UV islands (connected pieces of the UV layout; vertices are already one
per (position, UV) pair, so a UV seam separates islands). When the islands' rectangles fill most of their
union (a terrain's planar UVs: one island), the union is cropped; otherwise each island's rectangle is
copied into a shelf-packed atlas. Either way the result is scaled down to at most ``size`` pixels a side,
so a tile's texel density follows its geometric detail (coarse tiles cover more ground at the same size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

#: pixels of margin around each island's rectangle (bilinear filtering and mip levels read beyond the edge)
PADDING = 4
#: the union of the islands' rectangles is cropped whole when it is at most this many times their summed area
UNION_SLACK = 1.3
#: more islands than this in one tile: the union is cropped (a shelf of thousands of tiny pieces helps nobody)
MAX_ISLANDS = 4096


@dataclass
class Atlas:
    """A tile's texture and its UVs on it (OBJ convention, v up), and how it was made."""

    image: Image.Image
    uvs: np.ndarray
    islands: int
    packed: bool  # True: shelf-packed islands; False: one cropped rectangle


def uv_islands(faces: np.ndarray, vertex_count: int) -> tuple[int, np.ndarray]:
    """The connected components of the faces' vertex graph: (how many, the component of each vertex)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows = faces[:, [0, 1, 2]].ravel()
    cols = faces[:, [1, 2, 0]].ravel()
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(vertex_count, vertex_count))
    count, labels = connected_components(graph, directed=False)
    return int(count), labels


def _rects(pixels: np.ndarray, labels: np.ndarray, count: int, width: int, height: int) -> np.ndarray:
    """Each island's rectangle in source pixels (x0, y0, x1, y1; padded, clipped, integer)."""
    lo = np.full((count, 2), np.inf)
    hi = np.full((count, 2), -np.inf)
    np.minimum.at(lo, labels, pixels)
    np.maximum.at(hi, labels, pixels)
    x0 = np.clip(np.floor(lo[:, 0]) - PADDING, 0, width - 1)
    y0 = np.clip(np.floor(lo[:, 1]) - PADDING, 0, height - 1)
    x1 = np.clip(np.ceil(hi[:, 0]) + PADDING, x0 + 1, width)
    y1 = np.clip(np.ceil(hi[:, 1]) + PADDING, y0 + 1, height)
    return np.column_stack([x0, y0, x1, y1]).astype(np.int64)


def _shelf_pack(sizes: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Places for rectangles of ``sizes`` (w, h) on shelves (tallest first) in a strip about as wide as the
    square of their total area: (their top-left corners, the strip's width, its height)."""
    order = np.argsort(-sizes[:, 1], kind="stable")
    width = int(max(sizes[:, 0].max(), np.ceil(np.sqrt((sizes[:, 0] * sizes[:, 1]).sum() * 1.1))))
    places = np.zeros_like(sizes)
    x = y = shelf = 0
    for index in order:
        w, h = int(sizes[index, 0]), int(sizes[index, 1])
        if x + w > width:
            x, y, shelf = 0, y + shelf, 0
        places[index] = (x, y)
        x, shelf = x + w, max(shelf, h)
    return places, width, y + shelf


def repack(image: Image.Image, faces: np.ndarray, uvs: np.ndarray, size: int) -> Atlas:
    """The texture for a tile of ``faces`` over vertices with ``uvs`` (OBJ convention, into ``image``): the
    islands' pixels cropped (one rectangle) or shelf-packed, at most ``size`` pixels a side, and the UVs
    remapped onto it. UVs outside [0, 1] (a repeating texture) are clamped to its edge first."""
    width, height = image.size
    uvs = np.clip(np.asarray(uvs, dtype=np.float64), 0.0, 1.0)
    pixels = np.column_stack([uvs[:, 0] * width, (1.0 - uvs[:, 1]) * height])  # x right, y down
    count, labels = uv_islands(np.asarray(faces), len(uvs))
    rects = _rects(pixels, labels, count, width, height)
    areas = (rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])
    union = np.array([rects[:, 0].min(), rects[:, 1].min(), rects[:, 2].max(), rects[:, 3].max()])
    union_area = (union[2] - union[0]) * (union[3] - union[1])
    packed = count > 1 and count <= MAX_ISLANDS and union_area > UNION_SLACK * areas.sum()
    if not packed:
        rects, labels = union[None, :], np.zeros(len(uvs), dtype=np.int64)
    sizes = np.column_stack([rects[:, 2] - rects[:, 0], rects[:, 3] - rects[:, 1]])
    places, strip_w, strip_h = _shelf_pack(sizes) if packed else (np.zeros((1, 2), np.int64), *sizes[0])
    scale = min(1.0, size / max(strip_w, strip_h))
    out_w, out_h = max(1, round(strip_w * scale)), max(1, round(strip_h * scale))
    atlas = Image.new(image.mode if image.mode in ("RGB", "RGBA", "L") else "RGB", (out_w, out_h))
    # every rectangle lands on whole pixels: its corners scaled and rounded, its pixels resized to fit
    dst0 = np.round(places * scale).astype(np.int64)
    dst1 = np.maximum(np.round((places + sizes) * scale).astype(np.int64), dst0 + 1)
    dst1 = np.minimum(dst1, (out_w, out_h))
    for index, (x0, y0, x1, y1) in enumerate(rects.tolist()):
        piece = image.crop((x0, y0, x1, y1))
        target = (int(dst1[index, 0] - dst0[index, 0]), int(dst1[index, 1] - dst0[index, 1]))
        if target != piece.size:
            piece = piece.resize(target, Image.Resampling.BOX)
        atlas.paste(piece.convert(atlas.mode), (int(dst0[index, 0]), int(dst0[index, 1])))
    factor = (dst1 - dst0) / sizes  # per rectangle and axis: exact, whatever the rounding of its corners
    moved = (pixels - rects[labels, :2]) * factor[labels] + dst0[labels]
    new_uvs = np.column_stack([moved[:, 0] / out_w, 1.0 - moved[:, 1] / out_h])
    return Atlas(atlas, np.clip(new_uvs, 0.0, 1.0), count, bool(packed))
