"""Point clouds for the web and for download: a COPC file (Cloud Optimized Point Cloud: LAS 1.4 compressed as
LAZ, its points arranged in an octree whose nodes are separate LAZ chunks, and a hierarchy telling where each
node lies, so a viewer reads the top of the tree first, by HTTP range requests) and a plain LAZ of every point,
both from the binary PLY the point-cloud step writes. Pure numpy + copclib (the COPC writer) + laspy/lazrs
(the LAZ writer); no Airflow. Run through :func:`write_bounded`, which runs the work in a child process with
a time and an address-space limit (:func:`e2e3d_provider.rightsize.worker.run_bounded`).

The octree: the cube around the points is cut into 128 cells a side per node; walking down the levels, every
node keeps one point per cell (chosen at random, with a fixed seed, so the output is the same run after run)
and hands the others to its eight children, until what is left under a node is at most ``node_points``, which
that node then keeps whole (a leaf); so each level is a sample of the cloud about twice as dense as the one
above. Coordinates are integers (LAS stores ``X * scale + offset``) at a power-of-two scale, so the voxel a
point falls in is exact integer arithmetic, and every reader computes the same node bounds, exactly: every
point is inside its node's voxel for all of them (copclib's spatial validation holds).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e2e3d_provider.exceptions import RightSizeInputError
from e2e3d_provider.rightsize.pointcloud import CHUNK_ROWS, PlyHeader, iter_points, read_header

#: LAS point data record formats 6 (XYZ, no colour) and 7 (XYZ + RGB), the ones COPC allows with and without
#: colour (LAS 1.4 spec, table 32 and 33): little-endian, packed
PDRF6 = np.dtype(
    [
        ("X", "<i4"), ("Y", "<i4"), ("Z", "<i4"), ("intensity", "<u2"), ("returns", "u1"), ("flags", "u1"),
        ("classification", "u1"), ("user_data", "u1"), ("scan_angle", "<i2"), ("point_source_id", "<u2"),
        ("gps_time", "<f8"),
    ]
)  # fmt: skip
PDRF7 = np.dtype([*PDRF6.descr, ("red", "<u2"), ("green", "<u2"), ("blue", "<u2")])
#: cells a side of one node's sampling grid (COPC's spacing is the root's cell edge: cube / 128)
GRID = 128
GRID_BITS = 7
#: bits of a Morton code per axis (3 x 21 = 63 bits in a uint64)
CODE_BITS = 21
#: return number 1 of 1 (bits 0-3 and 4-7 of PDRF 6's first byte): a point of a photogrammetric cloud
SINGLE_RETURN = 0x11
COLOURS = ("red", "green", "blue")


@dataclass(frozen=True)
class Frame:
    """How coordinates become LAS integers: ``X = round((x - offset) / scale)``. ``scale`` is a power of two
    and ``offset`` a multiple of it, so ``X * scale + offset``, the header's bounds and every node's bounds
    (sums of such numbers and their halves) are exact in double precision: each reader computes the same
    boxes, and a point on a box's face is inside it for all of them."""

    scale: float
    offset: tuple[float, float, float]

    def quantize(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) coordinates -> (N, 3) int64 LAS integers (never below 0: the offset is below the points)."""
        return np.maximum(np.rint((xyz - np.asarray(self.offset)) / self.scale), 0).astype(np.int64)

    def coordinates(self, ints: np.ndarray) -> np.ndarray:
        """LAS integers -> coordinates, as readers compute them (exact here)."""
        return ints * self.scale + np.asarray(self.offset)


def frame_for(lower: np.ndarray, upper: np.ndarray, coordinate_type: np.dtype) -> Frame:
    """The frame of a cloud whose points lie in ``[lower, upper]``: a ``scale`` (a power of two) a quarter
    of the spacing of float32 values at the cloud's largest magnitude when its coordinates are float32 (as
    fine as the data; about 1e-6 for coordinates up to 64), no coarser than needed otherwise, and coarse
    enough that the extent fits in 30 bits; an ``offset`` just below the points, a multiple of the scale."""
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    extent = float(np.max(upper - lower))
    magnitude = max(float(np.max(np.abs(np.concatenate([lower, upper])))), 1e-30)
    if np.dtype(coordinate_type).itemsize <= 4:
        finest = float(np.spacing(np.float32(magnitude))) / 4
    else:
        finest = float(np.spacing(magnitude)) * 1024
    exponent = math.floor(math.log2(finest))
    if extent > 0:
        exponent = max(exponent, math.ceil(math.log2(extent / 2**30)))
    scale = math.ldexp(1.0, exponent)
    offset = np.floor(lower / scale) * scale
    return Frame(scale, (float(offset[0]), float(offset[1]), float(offset[2])))


@dataclass(frozen=True)
class Cube:
    """The octree's cube in LAS integers: from ``low`` (the points' lowest integers, per axis), ``side``
    integers on every axis (the widest extent). COPC readers take the cube from the COPC info (centre and
    half size); copclib takes it from the header (its minimum and its widest span): with the header's bounds
    the points' own, both are this cube."""

    low: np.ndarray  # (3,) int64
    high: np.ndarray  # (3,) int64, the points' highest integers
    side: int

    @classmethod
    def of(cls, low: np.ndarray, high: np.ndarray) -> Cube:
        low, high = np.asarray(low, dtype=np.int64), np.asarray(high, dtype=np.int64)
        side = int(np.max(high - low))
        if side == 0:  # every point at one place: a cube one integer wide (the header's x max one above)
            high, side = high + np.array([1, 0, 0]), 1
        return cls(low, high, side)

    def cells(self, ints: np.ndarray, bits: int = CODE_BITS) -> np.ndarray:
        """(N, 3) LAS integers -> (N, 3) cell indices at ``bits`` levels down: exact integer arithmetic
        (``(X - low) 2^bits // side``), a point on the cube's far face in the last cell."""
        cells = ((ints - self.low) << np.int64(bits)) // np.int64(self.side)
        return np.minimum(cells, (1 << bits) - 1)

    def describe(self, frame: Frame) -> tuple[list[float], float]:
        """The cube as ``[cx, cy, cz, halfsize]`` in coordinates, and the root's spacing (cube / 128)."""
        halfsize = self.side * frame.scale / 2
        centre = frame.coordinates(self.low) + halfsize
        return [*(float(c) for c in centre), float(halfsize)], 2 * halfsize / GRID


def has_colour(header: PlyHeader) -> bool:
    names = {name for name, _ in header.properties}
    return all(c in names for c in COLOURS)


def _colour16(values: np.ndarray) -> np.ndarray:
    """A PLY colour channel as LAS's 16 bits: 8-bit values x 257 (255 -> 65535), 16-bit as they are,
    floats in [0, 1] x 65535."""
    kind = np.dtype(values.dtype)
    if kind.kind == "f":
        return np.clip(np.rint(values.astype(np.float64) * 65535), 0, 65535).astype(np.uint16)
    if kind.itemsize == 1:
        return values.astype(np.uint16) * 257
    return np.clip(values, 0, 65535).astype(np.uint16)


def records_of(chunk: np.ndarray, frame: Frame, colour: bool) -> np.ndarray:
    """A PLY chunk as LAS records: PDRF 7 with ``colour`` (the PLY's red, green, blue), else 6."""
    xyz = np.column_stack([chunk["x"], chunk["y"], chunk["z"]]).astype(np.float64)
    ints = frame.quantize(xyz)
    records = np.zeros(len(chunk), dtype=PDRF7 if colour else PDRF6)
    records["X"], records["Y"], records["Z"] = ints[:, 0], ints[:, 1], ints[:, 2]
    records["returns"] = SINGLE_RETURN
    if colour:
        for name in COLOURS:
            records[name] = _colour16(chunk[name])
    return records


def _spread(values: np.ndarray) -> np.ndarray:
    """The 21 low bits of each value spread to every third bit of a uint64 (Morton interleaving)."""
    v = values.astype(np.uint64) & np.uint64(0x1FFFFF)
    for shift, mask in ((32, 0x1F00000000FFFF), (16, 0x1F0000FF0000FF), (8, 0x100F00F00F00F00F),
                        (4, 0x10C30C30C30C30C3), (2, 0x1249249249249249)):  # fmt: skip
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def _compact(codes: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_spread`: every third bit gathered back into the low 21 bits."""
    v = codes.astype(np.uint64) & np.uint64(0x1249249249249249)
    for shift, mask in ((2, 0x10C30C30C30C30C3), (4, 0x100F00F00F00F00F), (8, 0x1F0000FF0000FF),
                        (16, 0x1F00000000FFFF), (32, 0x1FFFFF)):  # fmt: skip
        v = (v | (v >> np.uint64(shift))) & np.uint64(mask)
    return v


def morton(cells: np.ndarray) -> np.ndarray:
    """(N, 3) cell indices (< 2**21) -> uint64 Morton codes, x in the highest of each three bits: the
    code's top ``3 d`` bits are the key of the depth-``d`` node holding the cell."""
    return (_spread(cells[:, 0]) << np.uint64(2)) | (_spread(cells[:, 1]) << np.uint64(1)) | _spread(cells[:, 2])


def node_xyz(keys: np.ndarray) -> np.ndarray:
    """Node keys (Morton codes shifted down to their depth) -> (N, 3) x, y, z of the COPC voxel key."""
    keys = keys.astype(np.uint64)
    return np.column_stack([_compact(keys >> np.uint64(2)), _compact(keys >> np.uint64(1)), _compact(keys)])


def build_octree(
    codes: np.ndarray, priority: np.ndarray, node_points: int, depth_bits: int = CODE_BITS
) -> Iterator[tuple[int, np.ndarray]]:
    """The octree's levels over points sorted by their Morton ``codes`` (``depth_bits`` bits per axis):
    yields ``(depth, indices)`` of the points each level keeps, ascending (so each node's points are
    contiguous, in Morton order, which LAZ compresses best). A node keeps, of each of its 128^3 cells, the
    point of lowest ``priority`` (distinct random numbers) and passes the rest down, unless its subtree
    holds at most ``node_points`` points, or it is at the finest depth (only points of one cell are left
    there): then it keeps them all. Sorted input makes every node and every cell a run of consecutive
    points, so a level costs a few passes over what is left, and no sort."""
    left = np.ones(len(codes), dtype=bool)
    depth = 0
    while True:
        remaining = np.flatnonzero(left)
        if not len(remaining):
            return
        here = codes[remaining]
        nodes = _runs(here >> np.uint64(3 * (depth_bits - depth)))
        sizes = np.diff(np.append(nodes, len(here)))
        if depth == depth_bits:
            keep = np.ones(len(here), dtype=bool)
        else:
            keep = np.repeat(sizes <= node_points, sizes)  # whole leaves
            cells = _runs(here >> np.uint64(3 * max(0, depth_bits - depth - GRID_BITS)))
            rank = priority[remaining]
            best = np.minimum.reduceat(rank, cells)
            keep |= rank == np.repeat(best, np.diff(np.append(cells, len(here))))
            del cells, rank, best
        placed = remaining[keep]
        left[placed] = False
        del here, keep, remaining
        yield depth, placed
        depth += 1


def _runs(keys: np.ndarray) -> np.ndarray:
    """Where each run of equal values starts in a sorted array."""
    return np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))


def check_points(count: int, max_points: int, what: str) -> None:
    """Refuse a cloud of more than ``max_points`` points for COPC (the octree is built in memory)."""
    if count > max_points:
        raise RightSizeInputError(
            f"{what} has {count:,} points, more than copc_max_points = {max_points:,}: the COPC octree is built "
            "in memory (about 90 bytes a point), so no COPC is written (raise copc_max_points if the machine "
            "has the memory, or set copc = false)"
        )


def bounds_of(source: Path, header: PlyHeader, rows: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest x, y, z of a PLY's points, read in chunks."""
    lower, upper = np.full(3, np.inf), np.full(3, -np.inf)
    for chunk in iter_points(source, header, rows):
        xyz = np.column_stack([chunk["x"], chunk["y"], chunk["z"]]).astype(np.float64)
        lower, upper = np.minimum(lower, xyz.min(axis=0)), np.maximum(upper, xyz.max(axis=0))
    return lower, upper


def write_copc(
    source: Path,
    target: Path,
    *,
    node_points: int,
    max_points: int,
    rows: int = CHUNK_ROWS,
    seed: int = 0,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
    laz: Path | None = None,
) -> dict[str, Any]:
    """Write the binary (or any) PLY ``source`` as the COPC file ``target``, read in chunks of ``rows``
    points (``bounds``, the points' lowest and highest x, y, z, are read first when not given); returns its
    figures (points, nodes, depth, spacing, cube, scale, point_format, bytes). A cloud of more than
    ``max_points`` is refused before anything is read; the file is written to a partial file renamed at the
    end, so ``target`` is never half-written. With ``laz``, the same points in Morton order go to that LAZ
    file too (``figures["laz"]``). Memory: the records (36 bytes a point), their codes and
    priorities (12), and about 40 more a point while the first levels are chosen (465 MB at peak for 5 M
    points)."""
    import copclib

    header = read_header(source)
    check_points(header.count, max_points, str(source))
    if header.count == 0:
        raise RightSizeInputError(f"{source} holds no points")
    lower, upper = bounds or bounds_of(source, header, rows)
    frame = frame_for(lower, upper, header.dtype()["x"])
    cube = Cube.of(*frame.quantize(np.vstack([lower, upper])))  # quantizing keeps the order: these are the ends
    colour = has_colour(header)
    codes = np.empty(header.count, dtype=np.uint64)  # pass two: each point's Morton code
    done = 0
    for chunk in iter_points(source, header, rows):
        xyz = np.column_stack([chunk["x"], chunk["y"], chunk["z"]]).astype(np.float64)
        codes[done : done + len(chunk)] = morton(cube.cells(frame.quantize(xyz)))
        done += len(chunk)
        del chunk, xyz
    order = np.argsort(codes, kind="stable")
    codes = codes[order]
    at = np.empty(header.count, dtype=np.int64)
    at[order] = np.arange(header.count)  # where each point of the file goes in Morton order
    del order
    records = np.zeros(header.count, dtype=PDRF7 if colour else PDRF6)
    done = 0
    for chunk in iter_points(source, header, rows):  # pass three: the records, in Morton order
        records[at[done : done + len(chunk)]] = records_of(chunk, frame, colour)
        done += len(chunk)
        del chunk
    del at
    priority = np.random.default_rng(seed).permutation(header.count).astype(np.uint32)
    box, spacing = cube.describe(frame)

    config = copclib.CopcConfigWriter(
        7 if colour else 6, copclib.Vector3(frame.scale, frame.scale, frame.scale), copclib.Vector3(*frame.offset)
    )
    config.las_header.min = copclib.Vector3(*frame.coordinates(cube.low))
    config.las_header.max = copclib.Vector3(*frame.coordinates(cube.high))
    info = config.copc_info
    info.center_x, info.center_y, info.center_z = box[:3]
    info.halfsize, info.spacing = box[3], spacing
    partial = target.with_name(target.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    nodes, deepest = 0, 0
    try:
        writer = copclib.FileWriter(str(partial), config)
        for depth, placed in build_octree(codes, priority, node_points):
            keys = codes[placed] >> np.uint64(3 * (CODE_BITS - depth))
            starts = _runs(keys)
            xyz = node_xyz(keys[starts])
            for i, start in enumerate(starts):
                end = starts[i + 1] if i + 1 < len(starts) else len(placed)
                data = records[placed[start:end]].view(np.int8)
                key = copclib.VoxelKey(depth, int(xyz[i, 0]), int(xyz[i, 1]), int(xyz[i, 2]))
                writer.AddNode(key, copclib.VectorChar(data))
            nodes, deepest = nodes + len(starts), depth
            del placed, keys
        writer.Close()
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    figures: dict[str, Any] = {
        "format": "copc",
        "points": int(header.count),
        "nodes": nodes,
        "depth": deepest,
        "spacing": spacing,
        "cube": box,
        "scale": frame.scale,
        "point_format": 7 if colour else 6,
        "bytes": target.stat().st_size,
    }
    if laz is not None:
        chunks = (records[start : start + rows] for start in range(0, len(records), rows))
        figures["laz"] = _write_laz_records(laz, frame, colour, chunks)
    return figures


def write_laz(
    source: Path, target: Path, *, rows: int = CHUNK_ROWS, bounds: tuple[np.ndarray, np.ndarray] | None = None
) -> dict[str, Any]:
    """Write the PLY ``source`` as the LAZ (LAS 1.4, PDRF 7 with colour, else 6) ``target``: every point in
    the PLY's order, streamed a chunk at a time (any number of points in bounded memory), at the scale and
    offset :func:`frame_for` gives its ``bounds`` (read first when not given). :func:`write_copc` writes the
    LAZ itself when it runs (the same points in Morton order, which compresses far better)."""
    header = read_header(source)
    if header.count == 0:
        raise RightSizeInputError(f"{source} holds no points")
    frame = frame_for(*(bounds or bounds_of(source, header, rows)), header.dtype()["x"])
    colour = has_colour(header)
    chunks = (records_of(chunk, frame, colour) for chunk in iter_points(source, header, rows))
    return _write_laz_records(target, frame, colour, chunks)


def _write_laz_records(target: Path, frame: Frame, colour: bool, chunks: Iterable[np.ndarray]) -> dict[str, Any]:
    """Write LAS records (PDRF 7 with ``colour``, else 6, in ``frame``), chunk by chunk, as the LAZ file
    ``target`` (laspy + lazrs, compressing on every core); written to a partial file renamed at the end, so
    ``target`` is never half-written."""
    import laspy

    las = laspy.LasHeader(point_format=7 if colour else 6, version="1.4")
    las.offsets, las.scales = np.asarray(frame.offset), np.full(3, frame.scale)
    partial = target.with_name(target.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    points = 0
    try:
        with laspy.open(
            partial, mode="w", header=las, do_compress=True, laz_backend=laspy.LazBackend.LazrsParallel
        ) as writer:
            for records in chunks:
                data = np.frombuffer(records.tobytes(), dtype=las.point_format.dtype())
                writer.write_points(laspy.ScaleAwarePointRecord(data, las.point_format, las.scales, las.offsets))
                points += len(records)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return {
        "format": "laz",
        "points": points,
        "scale": frame.scale,
        "point_format": 7 if colour else 6,
        "bytes": target.stat().st_size,
    }


def write_arrays(
    arrays: dict[str, np.ndarray],
    *,
    source: str,
    copc: str | None,
    laz: str | None,
    node_points: int,
    max_points: int,
    rows: int = CHUNK_ROWS,
) -> dict[str, np.ndarray]:
    """The bounded child's work (:func:`write_bounded`): the COPC file ``copc`` and the LAZ ``laz`` (either
    may be None) of the PLY ``source``, in one frame; their figures come back as JSON in a byte array."""
    import json

    path = Path(source)
    header = read_header(path)
    if copc is not None:
        check_points(header.count, max_points, source)
    bounds = bounds_of(path, header, rows)
    figures: dict[str, Any] = {}
    if copc is not None:  # the LAZ from the COPC's records (Morton order)
        copc_figures = write_copc(
            path,
            Path(copc),
            node_points=node_points,
            max_points=max_points,
            rows=rows,
            bounds=bounds,
            laz=None if laz is None else Path(laz),
        )
        figures["laz"] = copc_figures.pop("laz", None)
        figures["copc"] = copc_figures
    elif laz is not None:  # streamed from the PLY, in its order
        figures["laz"] = write_laz(path, Path(laz), rows=rows, bounds=bounds)
    return {"figures": np.frombuffer(json.dumps(figures).encode(), dtype=np.uint8)}


def write_bounded(
    source: Path,
    *,
    copc: Path | None,
    laz: Path | None,
    node_points: int,
    max_points: int,
    seconds: float,
    memory_bytes: int,
    what: str,
) -> dict[str, dict[str, Any]]:
    """:func:`write_arrays` in a child process stopped after ``seconds`` and limited to ``memory_bytes`` of
    address space (the policy's ``mesh_seconds`` and ``mesh_memory_bytes``): returns ``{"copc": figures,
    "laz": figures}`` for those written. A cloud over ``max_points`` (``copc_max_points``) is refused here,
    before the child starts; a limit reached is a RightSizeInputError naming it. A failure leaves no file."""
    import json

    from e2e3d_provider.rightsize.worker import run_bounded

    if copc is not None:
        check_points(read_header(source).count, max_points, what)
    try:
        out = run_bounded(
            f"{__name__}:write_arrays",
            {},
            {
                "source": str(source),
                "copc": None if copc is None else str(copc),
                "laz": None if laz is None else str(laz),
                "node_points": int(node_points),
                "max_points": int(max_points),
            },
            seconds=seconds,
            memory_bytes=memory_bytes,
            what=f"{what}: writing its COPC and LAZ",
            preload=("copclib", "laspy", "lazrs"),
        )
    except BaseException:
        for path in (copc, laz):  # a child killed mid-write leaves its partial file
            if path is not None:
                path.with_name(path.name + ".partial").unlink(missing_ok=True)
                path.unlink(missing_ok=True)
        raise
    return json.loads(out["figures"].tobytes())
