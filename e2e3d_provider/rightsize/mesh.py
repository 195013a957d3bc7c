"""Meshes: read a textured OBJ, simplify it into a level-of-detail chain, write each LOD as an OBJ that
shares the original's MTL and texture, and measure each LOD's geometric error against the full mesh (the
figures, and the measured samples the 3D Tiles tree takes its per-tile errors from). Pure functions over
files and arrays; no Airflow. GLBs are written by :mod:`.gltf`.

The chain itself (meshoptimizer and the error figures: native code whose time some inputs blow up)
runs in a child process with a time and a memory limit (:func:`lod_chain`, :mod:`.worker`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e2e3d_provider.exceptions import RightSizeInputError
from e2e3d_provider.rightsize.formatting import format_rows, parse_numbers
from e2e3d_provider.rightsize.limits import MAX_FACES, MESH_MEMORY_BYTES, MESH_SECONDS

_LINE_START = re.compile(rb"^(v|vt|f|mtllib|usemtl)[ \t]+([^\r\n]*)", re.MULTILINE)


@dataclass
class Mesh:
    """A triangle mesh with one UV per vertex (OBJ's separate ``v``/``vt`` indices are unified)."""

    positions: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64, 0-based into positions
    uvs: np.ndarray | None = None  # (V, 2) float64, OBJ convention (v up)
    mtllib: str | None = None
    material: str | None = None
    #: (V,) int64: the OBJ ``v`` line each vertex comes from (vertices split by a UV seam share it), or None
    position_ids: np.ndarray | None = None

    @property
    def diagonal(self) -> float:
        """Length of the bounding box's diagonal: the unit every error figure is a fraction of."""
        return float(np.linalg.norm(self.positions.max(axis=0) - self.positions.min(axis=0)))


def _face_fields(sample: bytes) -> tuple[int, bool]:
    """Per face corner: how many indices (v, v/vt, v/vt/vn, v//vn) and whether the second is a UV."""
    corner = sample.split()[0]
    if b"//" in corner:
        return 2, False
    return corner.count(b"/") + 1, corner.count(b"/") >= 1


def _count_lines(data: bytes, keyword: bytes) -> int:
    """How many lines of ``data`` start with ``keyword`` and a blank (the lines ``_LINE_START`` finds),
    counted in C before any line is split out."""
    return sum(data.count(b"\n" + keyword + gap) + data.startswith(keyword + gap) for gap in (b" ", b"\t"))


def read_obj(path: Path, max_faces: int = MAX_FACES) -> Mesh:
    """Read a triangle or polygon OBJ (polygons are fan-triangulated) with optional UVs and one material.

    Raises :class:`RightSizeInputError` for anything that is not such a file: no vertices, no faces,
    indices out of range, unparsable numbers, several materials; and for a mesh of more than ``max_faces``
    triangles, or more than three times as many ``v`` or ``vt`` lines (more than its faces can use), which
    is refused before its lines are split out (that costs about 40 bytes of memory a line).
    """
    data = path.read_bytes()
    for keyword, most in ((b"f", max_faces), (b"v", 3 * max_faces), (b"vt", 3 * max_faces)):
        if (count := _count_lines(data, keyword)) > most:
            raise RightSizeInputError(
                f"{path} has {count:,} {keyword.decode()} lines, more than "
                f"{'' if keyword == b'f' else '3 x '}max_faces = {max_faces:,} allows "
                "(raise max_faces if the mesh is sound)"
            )
    found: dict[bytes, list[bytes]] = {b"v": [], b"vt": [], b"f": [], b"mtllib": [], b"usemtl": []}
    for match in _LINE_START.finditer(data):
        found[match.group(1)].append(match.group(2))
    if not found[b"v"]:
        raise RightSizeInputError(f"{path} is not an OBJ mesh: it has no vertices")
    if not found[b"f"]:
        raise RightSizeInputError(f"{path} has no faces: there is nothing to simplify")
    if len(set(found[b"usemtl"])) > 1:
        raise RightSizeInputError(f"{path} uses {len(set(found[b'usemtl']))} materials; right-sizing handles one")
    rows = found[b"v"]
    width = len(rows[0].split(b"#")[0].split())  # x y z, or x y z w, or x y z r g b
    if width not in (3, 4, 6, 7):
        raise RightSizeInputError(f"{path}: a vertex line holds {width} values, not 3")
    positions = parse_numbers(b" ".join(rows), np.float64, width * len(rows), "a vertex line", path)
    positions = positions.reshape(-1, width)[:, :3]
    uvs = None
    if found[b"vt"]:
        rows = found[b"vt"]
        width = len(rows[0].split())
        raw = parse_numbers(b" ".join(rows), np.float64, width * len(rows), "a vt line", path)
        uvs = raw.reshape(-1, width)[:, :2]
    if not np.isfinite(positions).all():
        raise RightSizeInputError(f"{path}: vertex coordinates include NaN or infinity")
    fields, has_uv = _face_fields(found[b"f"][0])
    text = b" ".join(found[b"f"]).replace(b"//", b" ").replace(b"/", b" ")
    corners = parse_numbers(text, np.int64, None, "a face line", path)
    if (triangles := corners.size // fields - 2 * len(found[b"f"])) > max_faces:  # polygons: corners - 2 each
        raise RightSizeInputError(f"{path} has about {triangles:,} triangles, more than max_faces = {max_faces:,}")
    if corners.size == len(found[b"f"]) * 3 * fields and b"#" not in text:  # all triangles, one format: vectorised
        table = corners.reshape(-1, 3, fields)
        face_v, face_t = table[:, :, 0], table[:, :, 1] if has_uv else None
    else:
        face_v, face_t = _polygon_faces(found[b"f"], fields, has_uv, path)
    if len(face_v) > max_faces:
        raise RightSizeInputError(f"{path} has {len(face_v):,} triangles, more than max_faces = {max_faces:,}")
    face_v = _absolute(face_v, len(positions), path, "vertex")
    if face_t is not None and uvs is not None:
        face_t = _absolute(face_t, len(uvs), path, "texture coordinate")
        positions, uvs, faces, position_ids = _unify(positions, uvs, face_v, face_t)
    else:
        uvs, faces, position_ids = None, face_v, np.arange(len(positions), dtype=np.int64)
    return Mesh(
        positions=positions,
        faces=faces,
        uvs=uvs,
        mtllib=found[b"mtllib"][0].decode().strip() if found[b"mtllib"] else None,
        material=found[b"usemtl"][0].decode().strip() if found[b"usemtl"] else None,
        position_ids=position_ids,
    )


def _polygon_faces(rows: list[bytes], fields: int, has_uv: bool, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Faces with more than three corners, or mixed formats: fan-triangulated one line at a time."""
    vs: list[tuple[int, int, int]] = []
    ts: list[tuple[int, int, int]] = []
    for row in rows:
        corners = [c.split(b"/") for c in row.split(b"#")[0].split()]
        if len(corners) < 3:
            raise RightSizeInputError(f"{path}: a face has fewer than 3 corners: {row[:60]!r}")
        try:
            v = [int(c[0]) for c in corners]
            t = [int(c[1]) if len(c) > 1 and c[1] else 0 for c in corners]
        except ValueError:
            raise RightSizeInputError(f"{path}: a face holds something that is not an index: {row[:60]!r}") from None
        for k in range(1, len(corners) - 1):
            vs.append((v[0], v[k], v[k + 1]))
            ts.append((t[0], t[k], t[k + 1]))
    face_t = np.array(ts, dtype=np.int64) if has_uv else None
    return np.array(vs, dtype=np.int64), face_t


def _absolute(indices: np.ndarray, count: int, path: Path, what: str) -> np.ndarray:
    """OBJ's 1-based (or negative, counted from the end) indices as 0-based, all in range."""
    out = np.where(indices < 0, indices + count, indices - 1)
    if (indices == 0).any() or out.min() < 0 or out.max() >= count:
        raise RightSizeInputError(f"{path}: a face names a {what} that does not exist (there are {count})")
    return out


def _unify(
    positions: np.ndarray, uvs: np.ndarray, face_v: np.ndarray, face_t: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One vertex per distinct (position, UV) pair, as GPUs and simplifiers want them; also the OBJ
    position each comes from (so normals can be smooth across UV seams)."""
    if np.array_equal(face_v, face_t) and len(positions) == len(uvs):
        return positions, uvs, face_v, np.arange(len(positions), dtype=np.int64)
    pairs = face_v.astype(np.int64) * len(uvs) + face_t
    unique, inverse = np.unique(pairs.ravel(), return_inverse=True)
    ids = unique // len(uvs)
    return positions[ids], uvs[unique % len(uvs)], inverse.reshape(-1, 3), ids


def simplify(mesh: Mesh, ratio: float) -> Mesh:
    """The mesh reduced to about ``ratio`` of its faces by quadric-error simplification (meshoptimizer).

    meshoptimizer keeps the original vertices (it only collapses edges onto existing ones), so every
    LOD keeps exact UVs into the same texture; the border is locked so a terrain keeps its outline.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"a level of detail keeps a fraction of the faces in (0, 1], not {ratio}")
    if ratio == 1:
        return mesh
    return _subset(mesh, *_simplified(mesh, ratio))


def _subset(mesh: Mesh, used: np.ndarray, faces: np.ndarray) -> Mesh:
    """The mesh of ``faces`` over the vertices ``used`` of ``mesh`` (UVs and material kept)."""
    return Mesh(
        positions=mesh.positions[used],
        faces=faces,
        uvs=mesh.uvs[used] if mesh.uvs is not None else None,
        mtllib=mesh.mtllib,
        material=mesh.material,
        position_ids=mesh.position_ids[used] if mesh.position_ids is not None else None,
    )


def _simplified(mesh: Mesh, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """meshoptimizer's simplification of ``mesh`` to ``ratio`` of its faces, as the indices of the
    vertices it keeps and its faces over them."""
    import meshoptimizer

    indices = np.ascontiguousarray(mesh.faces.ravel(), dtype=np.uint32)
    positions = np.ascontiguousarray(mesh.positions, dtype=np.float32)
    target = max(3, int(len(indices) * ratio) // 3 * 3)
    out = np.empty_like(indices)
    kept = meshoptimizer.simplify(
        out,
        indices,
        positions,
        target_index_count=target,
        target_error=1.0,  # the face budget decides, not an error bound
        options=meshoptimizer.SIMPLIFY_LOCK_BORDER,
    )
    used, faces = np.unique(out[:kept], return_inverse=True)
    return used, faces.reshape(-1, 3).astype(np.int64)


@dataclass
class Level:
    """One level of a mesh's chain: the mesh (level 0 is the original), the fraction of the faces it was
    asked for, its surface error against the original (fractions of the diagonal), and the samples that
    error was measured on: (N, 4) rows of a point (on either surface) and its distance to the other
    surface, in the mesh's units (none for level 0); ``used``: the original's vertices it keeps."""

    level: int
    ratio: float
    mesh: Mesh
    error: dict[str, float]
    samples: np.ndarray
    used: np.ndarray


def lod_chain(
    mesh: Mesh,
    ratios: Sequence[float],
    error_samples: int,
    *,
    seconds: float = MESH_SECONDS,
    memory_bytes: int = MESH_MEMORY_BYTES,
    what: str = "the mesh",
) -> list[Level]:
    """The mesh and its simplifications to each of ``ratios`` of its faces, each with its surface error
    (``error_samples`` points each way) and the samples it was measured on, computed in a child process that may use
    ``memory_bytes`` of address space and is stopped after ``seconds``: a :class:`RightSizeInputError`
    naming ``what`` and the limit then, so a hostile mesh costs bounded time and memory."""
    from e2e3d_provider.rightsize.worker import run_bounded

    arrays = {"positions": mesh.positions, "faces": mesh.faces}
    if mesh.uvs is not None:
        arrays["uvs"] = mesh.uvs
    out = run_bounded(
        f"{__name__}:lod_chain_arrays",
        arrays,
        {"ratios": [float(r) for r in ratios], "error_samples": int(error_samples)},
        seconds=seconds,
        memory_bytes=memory_bytes,
        what=f"{what}: simplifying and measuring its levels",
        preload=("meshoptimizer", "scipy.spatial"),
    )
    levels = []
    for level, ratio in enumerate([1.0, *ratios]):
        lod = mesh if level == 0 else _subset(mesh, out[f"used{level}"], out[f"faces{level}"])
        error = {"hausdorff": float(out[f"error{level}"][0]), "mean_distance": float(out[f"error{level}"][1])}
        used = out[f"used{level}"] if level else np.arange(len(mesh.positions))
        levels.append(Level(level, ratio, lod, error, out[f"samples{level}"], used))
    return levels


def lod_chain_arrays(arrays: dict[str, np.ndarray], ratios: list[float], error_samples: int) -> dict[str, np.ndarray]:
    """:func:`lod_chain`'s work, run by the worker: per level ``n`` (0 = the mesh itself), ``used<n>`` and
    ``faces<n>`` (the simplification), ``error<n>`` (Hausdorff and mean distance) and ``samples<n>`` (the
    points it was measured on, with their distances)."""
    mesh = Mesh(arrays["positions"], arrays["faces"], arrays.get("uvs"))
    out: dict[str, np.ndarray] = {}
    index = SurfaceIndex(mesh) if ratios else None  # every level is measured against the original
    for level, ratio in enumerate([1.0, *ratios]):
        if level:
            used, faces = _simplified(mesh, ratio)
            lod = _subset(mesh, used, faces)
            out[f"used{level}"], out[f"faces{level}"] = used, faces
            samples = surface_samples(mesh, lod, error_samples, index)
            error = error_figures(samples, mesh.diagonal)
        else:
            samples, error = np.zeros((0, 4)), {"hausdorff": 0.0, "mean_distance": 0.0}
        out[f"samples{level}"] = samples
        out[f"error{level}"] = np.array([error["hausdorff"], error["mean_distance"]])
    return out


def write_obj(mesh: Mesh, path: Path, mtllib: str | None = None, comment: str = "") -> None:
    """An OBJ of ``mesh`` (``f v/vt`` when it has UVs); ``mtllib`` is written as given (a path relative
    to ``path``'s folder, so a LOD in a subfolder shares its original's MTL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as out:
        out.write(f"# {comment}\n" if comment else "")
        if mtllib:
            out.write(f"mtllib {mtllib}\n")
        out.writelines(format_rows("v %.6f %.6f %.6f\n", mesh.positions))
        if mesh.uvs is not None:
            out.writelines(format_rows("vt %.6f %.6f\n", mesh.uvs))
        if mesh.material:
            out.write(f"usemtl {mesh.material}\n")
        corners = mesh.faces + 1
        if mesh.uvs is not None:
            out.writelines(format_rows("f %d/%d %d/%d %d/%d\n", np.repeat(corners, 2, axis=1)))
        else:
            out.writelines(format_rows("f %d %d %d\n", corners))


def sample_surface(mesh: Mesh, count: int, seed: int = 0) -> np.ndarray:
    """``count`` points spread uniformly over the mesh's surface (area-weighted), seeded."""
    rng = np.random.default_rng(seed)
    tri = mesh.positions[mesh.faces]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if area.sum() <= 0:
        raise RightSizeInputError("the mesh has no area: every face is degenerate")
    chosen = rng.choice(len(tri), size=count, p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(count))[:, None], rng.random(count)[:, None]
    t = tri[chosen]
    return (1 - r1) * t[:, 0] + r1 * (1 - r2) * t[:, 1] + r1 * r2 * t[:, 2]


def closest_on_triangles(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """For each point ``points[i]`` the closest point on triangle ``tri[i]`` (vectorised, Ericson's
    region test): exact, whatever the triangle's shape."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    ab, ac, ap = b - a, c - a, points - a
    d1, d2 = np.einsum("ij,ij->i", ab, ap), np.einsum("ij,ij->i", ac, ap)
    bp, cp = points - b, points - c
    d3, d4 = np.einsum("ij,ij->i", ab, bp), np.einsum("ij,ij->i", ac, bp)
    d5, d6 = np.einsum("ij,ij->i", ab, cp), np.einsum("ij,ij->i", ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = va + vb + vc
        v, w = vb / denom, vc / denom
        result = a + ab * v[:, None] + ac * w[:, None]  # inside the face
        edge_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
        t = d1 / (d1 - d3)
        result = np.where(edge_ab[:, None], a + ab * t[:, None], result)
        edge_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
        t = d2 / (d2 - d6)
        result = np.where(edge_ac[:, None], a + ac * t[:, None], result)
        edge_bc = (va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0)
        t = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        result = np.where(edge_bc[:, None], b + (c - b) * t[:, None], result)
    result = np.where(((d1 <= 0) & (d2 <= 0))[:, None], a, result)
    result = np.where(((d3 >= 0) & (d4 <= d3))[:, None], b, result)
    result = np.where(((d6 >= 0) & (d5 <= d6))[:, None], c, result)
    return np.nan_to_num(result, nan=0.0)


class SurfaceIndex:
    """A mesh's triangles made ready for exact point-to-surface distances (:meth:`distance`); built once
    for the original, whose surface every level of a chain is measured against.

    The triangles with the closest centroids (a k-d tree finds them) give a first answer, an upper bound
    only: a long thin triangle (a simplified level fans them onto its locked border) can pass close to a
    point while its centroid lies far away. So every triangle that could still be nearer is then checked.
    All of a triangle lies within its radius ``r`` (the largest centroid-to-corner distance) of its
    centroid, so it comes no nearer than ``|point - centroid| - r``, nor nearer than its plane; those two
    sieves spare the exact distance for most pairs. A triangle outside a point's candidates has its
    centroid at least as far as the last candidate's, so only triangles of larger radius than that margin
    can beat the answer: the triangles are grouped by radius (half powers of two) and a k-d tree over a
    group's centroids gives, for the points left in doubt, the pairs within ``best + the group's largest
    radius``."""

    def __init__(self, mesh: Mesh) -> None:
        from scipy.spatial import cKDTree

        self.tri = mesh.positions[mesh.faces]
        self.centroids = self.tri.mean(axis=1)
        self.radii = np.linalg.norm(self.tri - self.centroids[:, None], axis=2).max(axis=1)
        normals = np.cross(self.tri[:, 1] - self.tri[:, 0], self.tri[:, 2] - self.tri[:, 0])
        lengths = np.linalg.norm(normals, axis=1)
        self.normals = normals / np.where(lengths > 0, lengths, 1.0)[:, None]  # a degenerate one's is 0: kept
        self.offsets = np.einsum("ij,ij->i", self.normals, self.tri[:, 0])
        self.tree = cKDTree(self.centroids)
        groups = np.ceil(np.log2(np.maximum(self.radii, np.finfo(float).tiny)) * 2).astype(np.int64)
        self.groups = [np.flatnonzero(groups == group) for group in np.unique(groups)]
        self._group_trees: dict[int, Any] = {}

    def distance(self, points: np.ndarray, candidates: int = 32, chunk: int = 2048) -> np.ndarray:
        """Exact distance from each point to the surface: to the nearest of all its triangles, the first
        answer from the ``candidates`` closest centroids; points go ``chunk`` at a time through the radius
        groups (sorted by their best distance, so a chunk's ball fits its points), which bounds the pairs
        held at once."""
        from scipy.spatial import cKDTree

        k = min(candidates, len(self.tri))
        apart, nearest = self.tree.query(points, k=k, workers=-1)
        apart, nearest = apart.reshape(len(points), k), nearest.reshape(len(points), k)
        best = np.linalg.norm(points - closest_on_triangles(points, self.tri[nearest[:, 0]]), axis=1)
        self._check(
            points, best, np.repeat(np.arange(len(points)), k - 1), nearest[:, 1:].ravel(), apart[:, 1:].ravel()
        )
        if k == len(self.tri):
            return best  # every triangle was a candidate
        margin = apart[:, -1]
        for number, members in enumerate(self.groups):
            reach = self.radii[members].max()
            doubtful = np.flatnonzero(margin - reach < best)
            if not len(doubtful):
                continue
            if number not in self._group_trees:
                self._group_trees[number] = cKDTree(self.centroids[members])
            tree = self._group_trees[number]
            doubtful = doubtful[np.argsort(best[doubtful], kind="stable")]
            for start in range(0, len(doubtful), chunk):
                at = doubtful[start : start + chunk]
                pairs = cKDTree(points[at]).sparse_distance_matrix(tree, best[at].max() + reach, output_type="ndarray")
                self._check(points, best, at[pairs["i"]], members[pairs["j"]], pairs["v"])
        return best

    def _check(
        self, points: np.ndarray, best: np.ndarray, which: np.ndarray, faces: np.ndarray, apart: np.ndarray
    ) -> None:
        """Lower ``best[which]`` to the exact distances to ``faces`` (centroids ``apart``) that may beat it."""
        near = apart - self.radii[faces] < best[which]
        which, faces = which[near], faces[near]
        near = np.abs(np.einsum("ij,ij->i", points[which], self.normals[faces]) - self.offsets[faces]) < best[which]
        which, faces = which[near], faces[near]
        found = np.linalg.norm(points[which] - closest_on_triangles(points[which], self.tri[faces]), axis=1)
        np.minimum.at(best, which, found)


def distance_to_surface(points: np.ndarray, mesh: Mesh, candidates: int = 32) -> np.ndarray:
    """Exact distance from each point to ``mesh``'s surface (the nearest of all its triangles): see
    :class:`SurfaceIndex`."""
    return SurfaceIndex(mesh).distance(points, candidates)


def surface_samples(
    full: Mesh, lod: Mesh, samples: int = 100_000, full_index: SurfaceIndex | None = None
) -> np.ndarray:
    """Points sampled on each surface (``samples`` on ``full``, then ``samples`` on ``lod``) with their exact
    point-to-triangle distance to the other surface: (2 x samples, 4) rows of x, y, z, distance. What
    :func:`surface_error` sums up, and what a 3D Tiles tile takes its own error from (the samples in it).
    ``full_index``: ``full``'s :class:`SurfaceIndex`, when a chain measures several levels against it."""
    on_full = sample_surface(full, samples, seed=1)
    on_lod = sample_surface(lod, samples, seed=2)
    return np.vstack(
        [
            np.column_stack([on_full, distance_to_surface(on_full, lod)]),
            np.column_stack([on_lod, (full_index or SurfaceIndex(full)).distance(on_lod)]),
        ]
    )


def error_figures(samples: np.ndarray, diagonal: float) -> dict[str, float]:
    """The Hausdorff distance and the mean surface distance (the mean of each way's mean) of
    :func:`surface_samples`' rows, as fractions of ``diagonal``."""
    half = len(samples) // 2
    a_to_b, b_to_a = samples[:half, 3], samples[half:, 3]
    diagonal = diagonal or 1.0
    return {
        "hausdorff": float(max(a_to_b.max(), b_to_a.max()) / diagonal),
        "mean_distance": float((a_to_b.mean() + b_to_a.mean()) / 2 / diagonal),
    }


def surface_error(full: Mesh, lod: Mesh, samples: int = 100_000) -> dict[str, float]:
    """How far ``lod``'s surface strays from ``full``'s, both ways: the Hausdorff distance and the mean
    surface distance over points sampled on each surface (distances to the other surface are exact
    point-to-triangle ones), as fractions of ``full``'s bounding-box diagonal."""
    if lod is full:
        return {"hausdorff": 0.0, "mean_distance": 0.0}
    return error_figures(surface_samples(full, lod, samples), full.diagonal)
