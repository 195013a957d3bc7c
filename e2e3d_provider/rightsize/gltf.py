"""The one binary glTF (GLB) writer of right-sizing, for the web GLB of each level of detail and for every
3D Tiles tile: positions, smooth normals, UVs and the texture embedded, so the file needs nothing beside
it (a relative image URI breaks as soon as the GLB is fetched through a pre-signed URL).

Three encodings of the same mesh (``compression``):

- ``"meshopt"`` (the default): ``EXT_meshopt_compression`` + ``KHR_mesh_quantization``: positions as
  unsigned 16-bit integers over the mesh's own box (the node's ``translation``/``scale`` bring them back),
  normals as signed 8-bit normalized, UVs as unsigned 16-bit normalized when they lie in [0, 1], indices
  16- or 32-bit; each buffer view meshoptimizer-encoded, with the extension's uncompressed fallback buffer
  declared (no bytes) as it requires. three.js, Cesium and gltfpack read it.
- ``"none"``: the very same quantized layout in plain buffer views: what the Khronos validator can check
  to the last value (it cannot look inside meshopt or Draco streams), so tests validate this twin too.
- ``"draco"``: ``KHR_draco_mesh_compression`` (positions, normals and UVs in one Draco stream), the
  encoding right-sizing wrote before; kept as an option.

Pure functions over arrays; no Airflow. Native encoders run here, so callers on untrusted input run this in
the bounded worker (:mod:`.worker`).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from e2e3d_provider.exceptions import RightSizeInputError

#: the encodings :func:`write_glb` knows
COMPRESSIONS = ("meshopt", "none", "draco")
#: quantization of positions in the Draco stream (bits per axis): 1/16384 of the largest extent
DRACO_POSITION_BITS = 14
DRACO_NORMAL_BITS = 10
DRACO_UV_BITS = 12
#: how far from unit length a quantized normal may be (the Khronos validator warns past 0.00465)
NORMAL_LENGTH_TOLERANCE = 0.004

_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_UBYTE, _BYTE, _USHORT, _UINT, _FLOAT = 5121, 5120, 5123, 5125, 5126


@dataclass
class GlbMesh:
    """What a GLB holds: positions (V, 3), triangles (F, 3) into them, and optionally UVs (V, 2) in OBJ's
    convention (v up; flipped to glTF's top-left origin when written) and unit normals (V, 3)."""

    positions: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray | None = None
    normals: np.ndarray | None = None


def vertex_normals(positions: np.ndarray, faces: np.ndarray, position_ids: np.ndarray | None = None) -> np.ndarray:
    """Unit normals per vertex: the area-weighted sum (unnormalized cross products) of the faces around it.

    ``position_ids`` (one per vertex: the OBJ ``v`` line it came from) accumulates over all vertices of one
    OBJ position, so the copies of a position that a UV seam splits get one normal: the seam does not crease
    the shading. A vertex no face with area touches gets +z."""
    ids = np.arange(len(positions)) if position_ids is None else np.asarray(position_ids, dtype=np.int64)
    tri = positions[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 x area: the weight
    corner_ids = ids[faces].ravel()
    size = int(np.max(ids)) + 1 if len(ids) else 0
    summed = np.column_stack(
        [np.bincount(corner_ids, weights=np.repeat(cross[:, k], 3), minlength=size) for k in range(3)]
    )
    per_vertex = summed[ids]
    length = np.linalg.norm(per_vertex, axis=1)
    flat = ~(length > 0)
    per_vertex[flat] = (0.0, 0.0, 1.0)
    length[flat] = 1.0
    return per_vertex / length[:, None]


def quantize_normals(normals: np.ndarray) -> np.ndarray:
    """Unit normals as signed 8-bit normalized components (x / 127): per normal, of the 8 lattice points
    around it, the one closest in direction among those within :data:`NORMAL_LENGTH_TOLERANCE` of unit
    length (plain rounding can miss unit length by more than readers tolerate), else the one closest to
    unit length."""
    unit = np.clip(np.asarray(normals, dtype=np.float64), -1.0, 1.0)
    low = np.floor(unit * 127.0)
    best = np.clip(np.round(unit * 127.0), -127, 127)
    best_score = np.full(len(unit), -np.inf)
    for corner in range(8):
        step = np.array([(corner >> axis) & 1 for axis in range(3)], dtype=np.float64)
        candidate = np.clip(low + step, -127, 127)
        length = np.linalg.norm(candidate, axis=1)
        cosine = np.einsum("ij,ij->i", candidate, unit) / np.maximum(length, 1e-12)
        length_error = np.abs(length / 127.0 - 1.0)
        # within the tolerance, direction decides; outside it, only nearness to unit length (scores below -1)
        score = np.where(length_error <= NORMAL_LENGTH_TOLERANCE, cosine, -2.0 - length_error)
        better = score > best_score
        best[better], best_score[better] = candidate[better], score[better]
    return best.astype(np.int8)


def _fetch_order(faces: np.ndarray, vertex_count: int) -> tuple[np.ndarray, np.ndarray]:
    """meshoptimizer's vertex-cache order of the triangles, then the vertices renumbered in the order the
    triangles first use them (what ``optimize_vertex_fetch`` does): both make the codec's job easier.
    Returns (new index -> old vertex, faces over the new numbering); unused vertices are dropped."""
    import meshoptimizer

    indices = np.ascontiguousarray(faces.ravel(), dtype=np.uint32)
    ordered = np.empty_like(indices)
    meshoptimizer.optimize_vertex_cache(ordered, indices, len(indices), vertex_count)
    order, first = np.unique(ordered, return_index=True)
    old = order[np.argsort(first, kind="stable")]
    remap = np.empty(vertex_count, dtype=np.int64)
    remap[old] = np.arange(len(old))
    return old.astype(np.int64), remap[ordered].reshape(-1, 3)


@dataclass
class _Stream:
    """One buffer view's data (raw, uncompressed), what kind of meshopt stream it is, and its stride."""

    data: bytes
    count: int
    stride: int
    mode: str  # "ATTRIBUTES" or "TRIANGLES" (EXT_meshopt_compression's names)


def write_glb(
    mesh: GlbMesh,
    path: Path,
    *,
    texture: bytes | None = None,
    mime: str = "image/jpeg",
    compression: str = "meshopt",
    generator: str = "e2e3d-provider right-sizing",
) -> int:
    """Write ``mesh`` as one self-contained GLB at ``path`` (``texture``, an encoded image of type ``mime``,
    embedded as its base colour), encoded per ``compression`` (see the module). Returns the bytes written.
    Raises :class:`RightSizeInputError` when the encoder refuses the mesh."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, not {compression!r}")
    positions = np.asarray(mesh.positions, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)
    if not len(faces):
        raise RightSizeInputError("a GLB needs at least one triangle")
    if compression == "draco":
        gltf, blob = _draco_layout(mesh, positions, faces)
    else:
        gltf, blob = _quantized_layout(mesh, positions, faces, compress=compression == "meshopt")
    if texture is not None:
        _embed_texture(gltf, blob, texture, mime)
    gltf["asset"] = {"version": "2.0", "generator": generator}
    body = _glb_bytes(gltf, bytes(blob))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return len(body)


def _quantized_layout(
    mesh: GlbMesh, positions: np.ndarray, faces: np.ndarray, *, compress: bool
) -> tuple[dict[str, object], bytearray]:
    """The glTF JSON and binary chunk of the ``meshopt``/``none`` encodings (same accessors either way)."""
    old, local = _fetch_order(faces, len(positions))
    count = len(old)
    points = positions[old]
    lo, hi = points.min(axis=0), points.max(axis=0)
    extent = np.where(hi > lo, hi - lo, 1.0)
    quantized = np.zeros((count, 4), dtype=np.uint16)  # padded to 8 bytes: vertex streams want stride % 4 == 0
    quantized[:, :3] = np.round((points - lo) / extent * 65535.0)
    streams = [_Stream(quantized.tobytes(), count, 8, "ATTRIBUTES")]
    accessors: list[dict[str, object]] = [
        {
            "componentType": _USHORT,
            "count": count,
            "type": "VEC3",
            "min": quantized[:, :3].min(axis=0).tolist(),
            "max": quantized[:, :3].max(axis=0).tolist(),
        }
    ]
    attributes = {"POSITION": 0}
    if mesh.normals is not None:
        normals = np.zeros((count, 4), dtype=np.int8)
        normals[:, :3] = quantize_normals(np.asarray(mesh.normals)[old])
        attributes["NORMAL"] = len(accessors)
        accessors.append({"componentType": _BYTE, "normalized": True, "count": count, "type": "VEC3"})
        streams.append(_Stream(normals.tobytes(), count, 4, "ATTRIBUTES"))
    if mesh.uvs is not None:
        uvs = np.column_stack([mesh.uvs[old, 0], 1.0 - mesh.uvs[old, 1]])  # glTF: origin top left
        attributes["TEXCOORD_0"] = len(accessors)
        if uvs.min() >= 0.0 and uvs.max() <= 1.0:
            data = np.round(uvs * 65535.0).astype(np.uint16)
            accessors.append({"componentType": _USHORT, "normalized": True, "count": count, "type": "VEC2"})
            streams.append(_Stream(data.tobytes(), count, 4, "ATTRIBUTES"))
        else:  # a texture that repeats: UVs beyond [0, 1] stay floats
            accessors.append({"componentType": _FLOAT, "count": count, "type": "VEC2"})
            streams.append(_Stream(uvs.astype(np.float32).tobytes(), count, 8, "ATTRIBUTES"))
    wide = count > 65535
    indices = local.ravel().astype(np.uint32 if wide else np.uint16)
    accessors.append({"componentType": _UINT if wide else _USHORT, "count": len(indices), "type": "SCALAR"})
    streams.append(_Stream(indices.tobytes(), len(indices), 4 if wide else 2, "TRIANGLES"))

    blob, views, fallback = bytearray(), [], 0
    if compress:
        import meshoptimizer

        meshoptimizer.encode_vertex_version(0)  # version 0: what EXT_meshopt_compression specifies
        meshoptimizer.encode_index_version(1)
    for index, stream in enumerate(streams):
        accessors[index]["bufferView"] = index
        view: dict[str, object] = {"byteLength": len(stream.data)}
        if stream.mode == "ATTRIBUTES":
            view.update(byteStride=stream.stride, target=_ARRAY_BUFFER)
        else:
            view["target"] = _ELEMENT_ARRAY_BUFFER
        if compress:
            if stream.mode == "ATTRIBUTES":
                vertices = np.frombuffer(stream.data, dtype=np.uint8).reshape(stream.count, stream.stride)
                encoded = meshoptimizer.encode_vertex_buffer(vertices, stream.count, stream.stride)
            else:
                encoded = meshoptimizer.encode_index_buffer(local.ravel().astype(np.uint32), stream.count, count)
            view.update(buffer=1, byteOffset=fallback)
            view["extensions"] = {
                "EXT_meshopt_compression": {
                    "buffer": 0,
                    "byteOffset": len(blob),
                    "byteLength": len(encoded),
                    "byteStride": stream.stride,
                    "count": stream.count,
                    "mode": stream.mode,
                }
            }
            fallback += len(stream.data) + (-len(stream.data) % 4)
            _append(blob, encoded)
        else:
            view.update(buffer=0, byteOffset=len(blob))
            _append(blob, stream.data)
        views.append(view)
    used = ["KHR_mesh_quantization"]
    buffers: list[dict[str, object]] = [{"byteLength": 0}]
    if compress:
        used.insert(0, "EXT_meshopt_compression")
        buffers.append({"byteLength": fallback, "extensions": {"EXT_meshopt_compression": {"fallback": True}}})
    gltf: dict[str, object] = {
        "extensionsUsed": list(used),
        "extensionsRequired": list(used),
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "translation": lo.tolist(), "scale": (extent / 65535.0).tolist()}],
        "meshes": [{"primitives": [{"attributes": attributes, "indices": len(accessors) - 1, "mode": 4}]}],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": buffers,
    }
    return gltf, blob


def _draco_layout(mesh: GlbMesh, positions: np.ndarray, faces: np.ndarray) -> tuple[dict[str, object], bytearray]:
    """The glTF JSON and binary chunk of the ``draco`` encoding (KHR_draco_mesh_compression)."""
    import DracoPy

    uvs = None if mesh.uvs is None else np.column_stack([mesh.uvs[:, 0], 1.0 - mesh.uvs[:, 1]])
    try:
        draco = DracoPy.encode(
            positions.astype(np.float32),
            faces=faces.astype(np.uint32),
            quantization_bits=DRACO_POSITION_BITS,
            compression_level=7,
            tex_coord=uvs,
            tex_coord_quantization_bits=DRACO_UV_BITS,
            normals=None if mesh.normals is None else np.asarray(mesh.normals, dtype=np.float64),
            normal_quantization_bits=DRACO_NORMAL_BITS,
        )
    except DracoPy.EncodingFailedException as err:
        raise RightSizeInputError(f"Draco cannot encode the mesh: {err}") from None
    ids = draco_attribute_ids(draco)
    accessors: list[dict[str, object]] = [
        {
            "componentType": _FLOAT,
            "count": len(positions),
            "type": "VEC3",
            "min": positions.min(axis=0).tolist(),
            "max": positions.max(axis=0).tolist(),
        }
    ]
    attributes, draco_attributes = {"POSITION": 0}, {"POSITION": ids["position"]}
    for name, kind, size, present in (
        ("NORMAL", "normal", "VEC3", mesh.normals is not None),
        ("TEXCOORD_0", "tex_coord", "VEC2", mesh.uvs is not None),
    ):
        if present:
            attributes[name] = len(accessors)
            draco_attributes[name] = ids[kind]
            accessors.append({"componentType": _FLOAT, "count": len(positions), "type": size})
    accessors.append({"componentType": _UINT, "count": int(faces.size), "type": "SCALAR"})
    primitive = {
        "attributes": attributes,
        "indices": len(accessors) - 1,
        "mode": 4,
        "extensions": {"KHR_draco_mesh_compression": {"bufferView": 0, "attributes": draco_attributes}},
    }
    blob = bytearray()
    _append(blob, draco)
    gltf: dict[str, object] = {
        "extensionsUsed": ["KHR_draco_mesh_compression"],
        "extensionsRequired": ["KHR_draco_mesh_compression"],
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [primitive]}],
        "accessors": accessors,
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": len(draco)}],
        "buffers": [{"byteLength": 0}],
    }
    return gltf, blob


def draco_attribute_ids(draco: bytes) -> dict[str, int]:
    """The unique ids DracoPy gave each attribute of a stream (the glTF extension names them)."""
    import DracoPy

    decoded = DracoPy.decode(draco)
    ids = {"position": 0}
    for attribute in getattr(decoded, "attributes", []) or []:
        kind = {0: "position", 1: "normal", 3: "tex_coord"}.get(int(attribute.get("attribute_type", -1)))
        if kind:
            ids[kind] = int(attribute["unique_id"])
    ids.setdefault("normal", 1)
    ids.setdefault("tex_coord", 2)
    return ids


def _embed_texture(gltf: dict[str, object], blob: bytearray, texture: bytes, mime: str) -> None:
    """The image as a buffer view of the binary chunk, and the material sampling it as base colour."""
    views = gltf["bufferViews"]
    assert isinstance(views, list)
    views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": len(texture)})
    _append(blob, texture)
    gltf["images"] = [{"bufferView": len(views) - 1, "mimeType": mime}]
    gltf["samplers"] = [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}]  # clamp: atlases
    gltf["textures"] = [{"source": 0, "sampler": 0}]
    gltf["materials"] = [
        {"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}, "metallicFactor": 0.0, "roughnessFactor": 1.0}}
    ]
    meshes = gltf["meshes"]
    assert isinstance(meshes, list)
    meshes[0]["primitives"][0]["material"] = 0


def _append(blob: bytearray, data: bytes) -> None:
    """``data`` at the end of the binary chunk, padded to 4 bytes (every view starts aligned)."""
    blob += data
    blob += b"\0" * (-len(data) % 4)


def _glb_bytes(gltf: dict[str, object], blob: bytes) -> bytes:
    """The GLB container: header, JSON chunk (space-padded), binary chunk (zero-padded)."""
    buffers = gltf["buffers"]
    assert isinstance(buffers, list)
    buffers[0]["byteLength"] = len(blob)
    header = json.dumps(gltf, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 4)
    return (
        struct.pack("<III", 0x46546C67, 2, 12 + 8 + len(header) + 8 + len(blob))
        + struct.pack("<I4s", len(header), b"JSON")
        + header
        + struct.pack("<I4s", len(blob), b"BIN\0")
        + blob
    )
