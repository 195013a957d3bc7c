"""Point clouds: PLY (ASCII or binary) rewritten as binary little-endian PLY, and voxel-grid
level-of-detail clouds, all computed streaming in chunks so memory stays bounded whatever the file's
size. Pure functions over files and arrays; no Airflow.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from e2e3d_provider.exceptions import RightSizeInputError
from e2e3d_provider.rightsize.formatting import parse_numbers
from e2e3d_provider.rightsize.limits import MAX_LINE_BYTES

#: PLY scalar type names -> numpy type codes (without byte order)
PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
CHUNK_ROWS = 500_000
#: points kept from pass one to estimate each LOD's voxel size
SAMPLE_POINTS = 200_000


@dataclass
class PlyHeader:
    """What a PLY header says of its vertex element: format, count, properties, where the data starts."""

    format: str  # ascii, binary_little_endian, binary_big_endian
    count: int
    properties: list[tuple[str, str]]  # (name, PLY type)
    data_offset: int
    comments: list[str] = field(default_factory=list)
    more_elements: bool = False  # elements (faces, edges) follow the vertices

    def dtype(self, byte_order: str = "<") -> np.dtype:
        return np.dtype([(name, byte_order + PLY_TYPES[kind]) for name, kind in self.properties])

    def text(self, fmt: str = "binary_little_endian", count: int | None = None, comment: str = "") -> bytes:
        lines = ["ply", f"format {fmt} 1.0", *(f"comment {c}" for c in self.comments)]
        if comment:
            lines.append(f"comment {comment}")
        lines.append(f"element vertex {self.count if count is None else count}")
        lines += [f"property {kind} {name}" for name, kind in self.properties]
        return ("\n".join([*lines, "end_header"]) + "\n").encode()


def read_header(path: Path) -> PlyHeader:
    """Parse a PLY header; a file that is not a PLY point cloud (no vertex element with x, y, z, a
    list property on vertices, a property declared twice, an unknown format) is a
    :class:`RightSizeInputError`."""
    with open(path, "rb") as handle:
        head = handle.read(64 * 1024)
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        raise RightSizeInputError(f"{path} is not a PLY file (no 'ply' magic or no end_header)")
    newline = head.find(b"\n", end)
    try:
        lines = head[:end].decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise RightSizeInputError(f"{path}: its PLY header is not ASCII text") from None
    fmt, count, comments, element, more_elements = "", -1, [], None, False
    properties: list[tuple[str, str]] = []
    for line in lines[1:]:
        words = line.split()
        if not words:
            continue
        if words[0] == "format" and len(words) >= 2:
            fmt = words[1]
        elif words[0] == "comment":
            comments.append(line[8:].strip())
        elif words[0] == "element" and len(words) == 3:
            if element == "vertex":
                more_elements = True  # elements after the vertices (faces, edges) are not read
                break
            element = words[1]
            if element != "vertex":
                raise RightSizeInputError(f"{path}: its first element is {element!r}; a point cloud starts with vertex")
            count = int(words[2]) if words[2].isdigit() else -1
        elif words[0] == "property" and element == "vertex":
            if words[1] == "list" or len(words) != 3 or words[1] not in PLY_TYPES:
                raise RightSizeInputError(f"{path}: vertex property {line.strip()!r} is not a scalar PLY type")
            if any(name == words[2] for name, _ in properties):  # no record type can hold it twice
                raise RightSizeInputError(f"{path}: vertex property {words[2]!r} is declared more than once")
            properties.append((words[2], words[1]))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise RightSizeInputError(f"{path}: unknown PLY format {fmt!r}")
    if count < 0:
        raise RightSizeInputError(f"{path}: no vertex element with a count")
    names = [name for name, _ in properties]
    if not {"x", "y", "z"} <= set(names):
        raise RightSizeInputError(f"{path}: vertices have no x, y, z properties (they have {', '.join(names)})")
    return PlyHeader(fmt, count, properties, newline + 1, comments, more_elements)


def iter_points(
    path: Path, header: PlyHeader, rows: int = CHUNK_ROWS, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[np.ndarray]:
    """The vertex rows of a PLY file as little-endian structured arrays of at most ``rows`` rows each,
    read one chunk at a time. A file that ends early, or holds rows that are not numbers, or NaN or
    infinite coordinates, or (ASCII) a row longer than ``max_line_bytes``, is a
    :class:`RightSizeInputError` naming the row."""
    dtype = header.dtype("<")
    done = 0
    with open(path, "rb") as handle:
        handle.seek(header.data_offset)
        reader = None
        if header.format == "ascii":
            if _arrow_installed() and _single_spaced(handle, header, max_line_bytes) and not header.more_elements:
                reader = _arrow_chunks(handle, header, rows, path)
            else:
                reader = _ascii_chunks(handle, header, rows, path, max_line_bytes)
        while done < header.count:
            want = min(rows, header.count - done)
            if reader is not None:
                chunk = next(reader)
            else:
                order = "<" if header.format == "binary_little_endian" else ">"
                raw = handle.read(want * dtype.itemsize)
                if len(raw) < want * dtype.itemsize:
                    raise RightSizeInputError(
                        f"{path} ends after {done + len(raw) // dtype.itemsize} of {header.count} points"
                    )
                chunk = np.frombuffer(raw, dtype=header.dtype(order)).astype(dtype)
            xyz = np.column_stack([chunk["x"], chunk["y"], chunk["z"]])
            if not np.isfinite(xyz).all():
                bad = done + int(np.flatnonzero(~np.isfinite(xyz).all(axis=1))[0])
                raise RightSizeInputError(f"{path}: point {bad} has a NaN or infinite coordinate")
            done += len(chunk)
            yield chunk


def _arrow_installed() -> bool:
    """Whether pyarrow can be imported: an optional accelerator (the ``arrow`` extra, 170 MB), not a
    requirement. Its multithreaded CSV reader parses single-spaced ASCII rows 5-8x faster than the
    numpy reader below, which every install has (``python -m bench.ascii_ply``); reconstruction tools write
    binary PLY, which neither needs."""
    try:
        import pyarrow.csv  # noqa: F401
    except ImportError:
        return False
    return True


def _single_spaced(handle: BinaryIO, header: PlyHeader, max_line_bytes: int) -> bool:
    """Whether the first vertex row is values split by single spaces (what the fast CSV reader takes);
    at most ``max_line_bytes`` of it are read (a longer row is the general reader's to refuse)."""
    at = handle.tell()
    first = handle.readline(max_line_bytes + 1).rstrip(b"\r\n")
    handle.seek(at)
    return len(first.split(b" ")) == len(header.properties)


def _arrow_chunks(handle: BinaryIO, header: PlyHeader, rows: int, path: Path) -> Iterator[np.ndarray]:
    """ASCII vertex rows parsed by Arrow's multithreaded CSV reader, streaming in blocks, re-cut into
    chunks of ``rows``; anything that is not a number of its declared type is a RightSizeInputError."""
    import pyarrow as pa
    import pyarrow.csv as csv

    names = [name for name, _ in header.properties]
    arrow_types = {"i1": pa.int8(), "u1": pa.uint8(), "i2": pa.int16(), "u2": pa.uint16(), "i4": pa.int32(),
                   "u4": pa.uint32(), "f4": pa.float32(), "f8": pa.float64()}  # fmt: skip
    dtype, left = header.dtype("<"), header.count
    try:
        reader = csv.open_csv(
            handle,
            read_options=csv.ReadOptions(column_names=names, block_size=2 << 20),  # memory grows with blocks
            parse_options=csv.ParseOptions(delimiter=" "),
            convert_options=csv.ConvertOptions(
                column_types={name: arrow_types[PLY_TYPES[kind]] for name, kind in header.properties}
            ),
        )
        pending: list[np.ndarray] = []
        for batch in reader:
            table = np.empty(batch.num_rows, dtype=dtype)
            for name in names:
                table[name] = batch.column(name).to_numpy(zero_copy_only=False)
            pending.append(table)
            while sum(len(p) for p in pending) >= min(rows, left) and left:
                merged = np.concatenate(pending)
                chunk, rest = merged[: min(rows, left)], merged[min(rows, left) :]
                pending = [rest] if len(rest) else []
                left -= len(chunk)
                yield chunk
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise RightSizeInputError(
            f"{path}: a point row is not {len(names)} numbers of the declared types ({err})"
        ) from None
    if left:
        merged = np.concatenate(pending) if pending else np.empty(0, dtype=dtype)
        if len(merged) < left:
            raise RightSizeInputError(f"{path} ends after {header.count - left + len(merged)} of {header.count} points")
        yield merged[:left]


def _ascii_chunks(
    handle: BinaryIO, header: PlyHeader, rows: int, path: Path, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[np.ndarray]:
    """ASCII vertex rows parsed a block of bytes at a time (cut at a line end), at most ``rows`` per chunk:
    the general reader (any whitespace, elements after the vertices). What it holds is bounded: a chunk is
    cut once a block's worth of whole rows is in, and a row longer than ``max_line_bytes`` (or a file with
    no line ends) is refused; the end of the file is where a read returns nothing."""
    width, dtype = len(header.properties), header.dtype("<")
    block = max(1 << 20, rows * 48)
    left, buffer, ended = header.count, b"", False
    while left:
        want = min(rows, left)
        ends = np.flatnonzero(np.frombuffer(buffer, dtype=np.uint8) == 10)
        lengths = np.diff(ends, prepend=-1) - 1  # each whole row's bytes, without its line end
        start = int(ends[-1]) + 1 if len(ends) else 0  # where the row still being read begins
        over = np.flatnonzero(lengths > max_line_bytes)
        if len(over) or len(buffer) - start > max_line_bytes:
            row = header.count - left + (int(over[0]) if len(over) else len(ends))
            raise RightSizeInputError(
                f"{path}: point row {row} is longer than max_line_bytes = {max_line_bytes:,} bytes "
                "(a PLY vertex row is a few numbers; raise max_line_bytes if the file is sound)"
            )
        if len(ends) >= want:
            cut, take = int(ends[want - 1]) + 1, want
        elif len(ends) and (ended or len(buffer) >= block):  # a block's worth of whole rows, or the last ones
            cut, take = start, len(ends)
        elif ended:
            if not buffer.strip():
                raise RightSizeInputError(f"{path} ends after {header.count - left} of {header.count} points")
            cut, take = len(buffer), 1  # the file's last row, without a line end
        else:
            data = handle.read(block)
            ended = not data
            buffer += data
            continue
        text, buffer = buffer[:cut], buffer[cut:]
        values = parse_numbers(text, np.float64, take * width, f"point rows {header.count - left}..", path)
        table = values.reshape(take, width)
        chunk = np.empty(take, dtype=dtype)
        for column, (name, _) in enumerate(header.properties):
            chunk[name] = table[:, column]
        left -= take
        yield chunk


@dataclass
class BinaryResult:
    """The binary rewrite of a cloud: its point count and bounds, and a sample of its points."""

    points: int
    lower: np.ndarray
    upper: np.ndarray
    sample: np.ndarray  # (S, 3) float64

    @property
    def diagonal(self) -> float:
        return float(np.linalg.norm(self.upper - self.lower))


def to_binary(source: Path, target: Path, rows: int = CHUNK_ROWS, max_line_bytes: int = MAX_LINE_BYTES) -> BinaryResult:
    """Rewrite the PLY ``source`` as binary little-endian PLY at ``target`` (same properties and values),
    chunk by chunk; written to a partial file and renamed, so ``target`` is never half-written. An ASCII
    row longer than ``max_line_bytes`` is refused."""
    header = read_header(source)
    if header.count == 0:
        raise RightSizeInputError(f"{source} holds no points")
    stride = max(1, header.count // SAMPLE_POINTS)
    lower, upper = np.full(3, np.inf), np.full(3, -np.inf)
    samples = []
    partial = target.with_name(target.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(partial, "wb") as out:
            out.write(header.text(comment="binary rewrite by e2e3d-provider right-sizing"))
            done = 0
            for chunk in iter_points(source, header, rows, max_line_bytes):
                out.write(chunk.tobytes())
                xyz = np.column_stack([chunk["x"], chunk["y"], chunk["z"]]).astype(np.float64)
                lower, upper = np.minimum(lower, xyz.min(axis=0)), np.maximum(upper, xyz.max(axis=0))
                first = (-done) % stride
                samples.append(xyz[first::stride].copy())  # a copy: a view would keep every chunk alive
                done += len(chunk)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    release_free_memory()  # the parser's buffers: the voxel passes that follow need the room
    return BinaryResult(header.count, lower, upper, np.concatenate(samples))


def _voxel_keys(xyz: np.ndarray, origin: np.ndarray, size: float) -> np.ndarray:
    cells = np.floor((xyz - origin) / size).astype(np.int64)
    np.clip(cells, 0, (1 << 21) - 1, out=cells)
    return (cells[:, 0] << 42) | (cells[:, 1] << 21) | cells[:, 2]


def voxel_size_for(sample: np.ndarray, total: int, target: int, lower: np.ndarray, upper: np.ndarray) -> float:
    """The voxel edge that leaves about ``target`` occupied voxels in a cloud of ``total`` points, estimated
    from a sample: occupied voxels are counted at a coarse size where the sample is dense, and the count is
    extrapolated to finer sizes with the cloud's measured dimension (about 2 for a surface)."""
    diagonal = float(np.linalg.norm(upper - lower)) or 1.0
    per_voxel = max(1.0, 20.0 * len(sample) / total) * total / len(sample)  # ~20 sample points a voxel

    def occupied(size: float) -> int:
        return len(np.unique(_voxel_keys(sample, lower, size)))

    coarse = diagonal / 4
    while coarse > diagonal / 4096 and occupied(coarse / 2) < len(sample) * len(sample) / (per_voxel * total):
        coarse /= 2
    v1, v2 = occupied(coarse), occupied(coarse / 2)
    dimension = min(3.0, max(1.0, math.log2(max(v2, 1) / max(v1, 1))))
    return coarse * (v1 / max(target, 1)) ** (1 / dimension)


def voxel_downsample(
    source: Path, target: Path, size: float, lower: np.ndarray, max_points: int, rows: int = CHUNK_ROWS
) -> tuple[int, float]:
    """One point per occupied voxel of edge ``size`` (the mean of the voxel's points, every property
    averaged), from the binary PLY ``source`` to binary PLY ``target``, streaming. Memory holds one
    accumulator per occupied voxel; when they pass ``max_points`` the voxel edge doubles and the
    accumulators merge, so memory stays bounded. Returns (points written, voxel edge used)."""
    header = read_header(source)
    names = [name for name, _ in header.properties]
    xyz = [names.index("x"), names.index("y"), names.index("z")]
    keys = np.empty(0, dtype=np.int64)
    sums: list[np.ndarray] = [np.empty(0) for _ in names]  # one column per property: merges copy one at a time
    counts = np.empty(0, dtype=np.int64)
    for chunk in iter_points(source, header, rows):
        chunk_keys = _voxel_keys(np.column_stack([chunk[names[i]].astype(np.float64) for i in xyz]), lower, size)
        unique, inverse = np.unique(chunk_keys, return_inverse=True)
        chunk_sums = [np.bincount(inverse, weights=chunk[name].astype(np.float64)) for name in names]
        keys, sums, counts = _merge(keys, sums, counts, unique, chunk_sums, np.bincount(inverse))
        del chunk, chunk_keys, unique, inverse, chunk_sums
        release_free_memory()
        while len(keys) > max_points:  # coarsen: each voxel joins the larger voxel its centroid lies in
            size *= 2 ** (1 / 6)  # small steps: the LOD lands near the cap, not far below it
            centroids = np.column_stack([sums[i] / counts for i in xyz])
            keys, inverse = np.unique(_voxel_keys(centroids, lower, size), return_inverse=True)
            del centroids
            for i in range(len(sums)):  # in place: the old column goes as the new one comes
                sums[i] = np.bincount(inverse, weights=sums[i])
            counts = np.bincount(inverse, weights=counts).astype(np.int64)
    out = np.empty(len(keys), dtype=header.dtype("<"))
    for index, (name, kind) in enumerate(header.properties):
        value = sums[index] / counts
        out[name] = np.round(value) if PLY_TYPES[kind][0] in "iu" else value
    del sums
    partial = target.with_name(target.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(partial, "wb") as handle:
            handle.write(header.text(count=len(out), comment=f"voxel grid {size:.6g} by e2e3d-provider right-sizing"))
            handle.write(out.tobytes())
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return len(out), size


def _merge(
    keys: np.ndarray,
    sums: list[np.ndarray],
    counts: np.ndarray,
    new: np.ndarray,
    new_sums: list[np.ndarray],
    new_counts: np.ndarray,
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Accumulators (sorted ``keys``, one sum column per property) with a chunk's per-voxel sums added:
    existing voxels in place, new ones inserted in key order."""
    if len(keys):
        at = np.searchsorted(keys, new)
        found = at < len(keys)
        found[found] = keys[at[found]] == new[found]
        hit = at[found]
        for column, added in zip(sums, new_sums, strict=True):
            column[hit] += added[found]
        counts[hit] += new_counts[found]
        fresh = ~found
        new, new_counts = new[fresh], new_counts[fresh]
        new_sums = [added[fresh] for added in new_sums]
    if not len(new):
        return keys, sums, counts
    order = np.argsort(np.concatenate([keys, new]), kind="stable")
    for i, added in enumerate(new_sums):  # in place, one column at a time: the old one goes as the new one comes
        sums[i] = np.concatenate([sums[i], added])[order]
    return np.concatenate([keys, new])[order], sums, np.concatenate([counts, new_counts])[order]


def release_free_memory() -> None:
    """Hand the C allocator's free pages back to the system (glibc ``malloc_trim``): the voxel merges
    allocate and free arrays of varying sizes, and without it the freed holes count as resident."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL(None).malloc_trim(0)
