"""The GLB writer (e2e3d_provider/rightsize/gltf.py) read back by independent readers: the Khronos glTF
validator (npm gltf-validator, run by node), pygltflib with meshoptimizer's decoders (tests/tileset_check.py),
Google's Draco decoder. A meshopt GLB decodes to exactly its uncompressed twin, which the validator checks
to the last value; normals are unit length and smooth across UV seams; the texture is inside the file."""

from __future__ import annotations

import io
from pathlib import Path

import DracoPy
import numpy as np
import pygltflib
import pytest
from PIL import Image

from e2e3d_provider.rightsize import gltf
from e2e3d_provider.rightsize import mesh as meshes
from tests.tileset_check import accessor, read_positions, view_bytes

#: what the validator may say of a valid meshopt or Draco GLB: it cannot look inside those streams
UNCHECKABLE = {"UNSUPPORTED_EXTENSION"}


def seam_obj(path: Path, size: int = 12) -> Path:
    """A curved grid whose UVs are cut along its middle column: the two halves map separate islands of the
    texture, so the OBJ's middle ``v`` lines each have two ``vt`` (a UV seam, as unwrapped meshes have)."""
    lines = []
    for j in range(size):
        for i in range(size):
            x, z = i / (size - 1), j / (size - 1)
            lines.append(f"v {x:.6f} {0.3 * np.sin(3 * x) + 0.2 * np.cos(4 * z):.6f} {z:.6f}")
    middle = size // 2
    uv_index = {}
    for half in (0, 1):
        for j in range(size):
            for i in range(middle, size) if half else range(middle + 1):
                uv_index[(half, i, j)] = len(uv_index) + 1
                u = 0.05 + 0.4 * (i / middle if not half else (i - middle) / (size - 1 - middle)) + 0.5 * half
                lines.append(f"vt {u:.6f} {0.05 + 0.9 * j / (size - 1):.6f}")
    for j in range(size - 1):
        for i in range(size - 1):
            half = int(i >= middle)
            corners = [(i, j), (i + 1, j), (i + 1, j + 1), (i, j + 1)]
            refs = [f"{b * size + a + 1}/{uv_index[(half, a, b)]}" for a, b in corners]
            lines.append(f"f {refs[0]} {refs[2]} {refs[1]}")  # counter-clockwise seen from above (+y)
            lines.append(f"f {refs[0]} {refs[3]} {refs[2]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def jpeg(size: tuple[int, int] = (64, 32)) -> bytes:
    out = io.BytesIO()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def rotated(indices: np.ndarray) -> np.ndarray:
    """Triangles with their corners rotated so the smallest comes first (winding kept)."""
    triangles = indices.reshape(-1, 3).astype(np.int64)
    first = triangles.argmin(axis=1)
    order = (first[:, None] + np.arange(3)) % 3
    return np.take_along_axis(triangles, order, axis=1)


@pytest.fixture
def seam_mesh(tmp_path: Path) -> meshes.Mesh:
    return meshes.read_obj(seam_obj(tmp_path / "seam.obj"))


def write_three(mesh: meshes.Mesh, folder: Path) -> dict[str, Path]:
    normals = gltf.vertex_normals(mesh.positions, mesh.faces, mesh.position_ids)
    glb = gltf.GlbMesh(mesh.positions, mesh.faces, mesh.uvs, normals)
    paths = {c: folder / f"mesh_{c}.glb" for c in gltf.COMPRESSIONS}
    for compression, path in paths.items():
        assert gltf.write_glb(glb, path, texture=jpeg(), compression=compression) == path.stat().st_size
    return paths


def test_a_meshopt_glb_decodes_to_its_uncompressed_twin_which_the_validator_passes_clean(
    seam_mesh: meshes.Mesh, tmp_path: Path, gltf_validator
) -> None:
    paths = write_three(seam_mesh, tmp_path)
    reports = gltf_validator(paths.values())
    twin = reports[str(paths["none"])]
    assert (twin["errors"], twin["warnings"], twin["infos"]) == (0, 0, 0), twin["messages"]
    for compression in ("meshopt", "draco"):
        report = reports[str(paths[compression])]
        assert report["errors"] == report["warnings"] == 0, report["messages"]
        assert {m["code"] for m in report["messages"]} <= UNCHECKABLE | {"UNUSED_OBJECT"}, report["messages"]

    packed, plain = pygltflib.GLTF2.load_binary(paths["meshopt"]), pygltflib.GLTF2.load_binary(paths["none"])
    assert packed.extensionsRequired == ["EXT_meshopt_compression", "KHR_mesh_quantization"]
    assert plain.extensionsRequired == ["KHR_mesh_quantization"]
    assert len(packed.accessors) == len(plain.accessors) == 4  # positions, normals, UVs, indices
    for index in range(3):  # every vertex value, bit for bit
        assert np.array_equal(accessor(packed, index, dequantize=False), accessor(plain, index, dequantize=False))
    # the same triangles in the same order and winding (meshopt's index codec may rotate a triangle's corners)
    assert np.array_equal(rotated(accessor(packed, 3)), rotated(accessor(plain, 3)))
    assert len(packed.binary_blob()) < len(plain.binary_blob())
    # the image is in the file, byte for byte
    for model in (packed, plain):
        image = model.images[0]
        assert image.uri is None and image.mimeType == "image/jpeg"
        assert view_bytes(model, image.bufferView)[0] == jpeg()

    # dequantized positions are the mesh's within the 16-bit step; the triangles are the mesh's
    from scipy.spatial import cKDTree

    positions = read_positions(paths["meshopt"])
    places, source_ids = np.unique(seam_mesh.positions, axis=0, return_inverse=True)
    distance, written_ids = cKDTree(places).query(positions)
    step = (seam_mesh.positions.max(axis=0) - seam_mesh.positions.min(axis=0)).max() / 65535
    assert distance.max() <= step
    primitive = packed.meshes[0].primitives[0]
    indices = accessor(packed, primitive.indices).ravel().astype(np.int64)
    written = {tuple(sorted(t)) for t in written_ids[indices].reshape(-1, 3).tolist()}
    assert written == {tuple(sorted(t)) for t in source_ids.ravel()[seam_mesh.faces].tolist()}
    uvs = accessor(packed, primitive.attributes.TEXCOORD_0)
    assert uvs.min() >= 0 and uvs.max() <= 1  # normalized 16-bit, glTF's top-left origin


def test_normals_are_unit_length_and_smooth_across_uv_seams(seam_mesh: meshes.Mesh, tmp_path: Path) -> None:
    assert len(seam_mesh.positions) > len(np.unique(seam_mesh.position_ids))  # the seam split vertices
    smooth = gltf.vertex_normals(seam_mesh.positions, seam_mesh.faces, seam_mesh.position_ids)
    creased = gltf.vertex_normals(seam_mesh.positions, seam_mesh.faces)  # per unified vertex: what the ids fix
    assert np.allclose(np.linalg.norm(smooth, axis=1), 1.0)
    seam = [np.flatnonzero(seam_mesh.position_ids == p) for p in np.unique(seam_mesh.position_ids)]
    seam = [copies for copies in seam if len(copies) > 1]
    assert len(seam) == 12
    for copies in seam:
        assert np.allclose(smooth[copies], smooth[copies[0]])
    assert max(np.abs(creased[c] - creased[c[0]]).max() for c in seam) > 0.05

    # in the file: normals decoded (8-bit) are unit length to the validator's tolerance and equal at the seam
    path = write_three(seam_mesh, tmp_path)["meshopt"]
    model = pygltflib.GLTF2.load_binary(path)
    primitive = model.meshes[0].primitives[0]
    normals = accessor(model, primitive.attributes.NORMAL)
    assert np.abs(np.linalg.norm(normals, axis=1) - 1).max() < 0.00465
    positions = read_positions(path)
    by_place: dict[tuple, list[np.ndarray]] = {}
    for point, normal in zip(np.round(positions, 3), normals, strict=True):
        by_place.setdefault(tuple(point), []).append(normal)
    shared = [group for group in by_place.values() if len(group) > 1]
    assert len(shared) == 12 and all(np.array_equal(g[0], other) for g in shared for other in g[1:])
    # and the shading follows the surface: up-facing on this height field
    assert (normals[:, 1] > 0.3).all()


def test_quantized_normals_stay_within_unit_length_where_plain_rounding_does_not() -> None:
    rng = np.random.default_rng(5)
    directions = rng.normal(size=(20_000, 3))
    directions /= np.linalg.norm(directions, axis=1)[:, None]
    best = gltf.quantize_normals(directions).astype(np.float64) / 127
    plain = np.round(directions * 127) / 127
    assert np.abs(np.linalg.norm(best, axis=1) - 1).max() < 0.00465  # the validator's tolerance
    assert np.abs(np.linalg.norm(plain, axis=1) - 1).max() > 0.00465
    cosine = np.einsum("ij,ij->i", best, directions) / np.linalg.norm(best, axis=1)
    assert np.degrees(np.arccos(np.minimum(cosine, 1))).max() < 1.0  # still the same direction, within a degree


def test_the_draco_option_carries_normals_and_uvs_in_its_stream(seam_mesh: meshes.Mesh, tmp_path: Path) -> None:
    path = write_three(seam_mesh, tmp_path)["draco"]
    model = pygltflib.GLTF2.load_binary(path)
    primitive = model.meshes[0].primitives[0]
    view = model.bufferViews[primitive.extensions["KHR_draco_mesh_compression"]["bufferView"]]
    blob = model.binary_blob()[view.byteOffset or 0 : (view.byteOffset or 0) + view.byteLength]
    decoded = DracoPy.decode(blob)
    assert len(decoded.faces) == len(seam_mesh.faces)
    assert decoded.normals is not None and len(decoded.normals) == len(decoded.points)
    assert np.allclose(np.linalg.norm(decoded.normals, axis=1), 1, atol=0.01)
    assert set(primitive.extensions["KHR_draco_mesh_compression"]["attributes"]) == {"POSITION", "NORMAL", "TEXCOORD_0"}


def test_uvs_outside_the_unit_square_stay_floats_and_an_empty_mesh_is_refused(tmp_path: Path, gltf_validator) -> None:
    positions = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=np.float64)
    faces = np.array([[0, 1, 2]])
    uvs = np.array([[0, 0], [3, 0], [0, 2]], dtype=np.float64)  # a repeating texture
    normals = gltf.vertex_normals(positions, faces)
    path = tmp_path / "repeat.glb"
    gltf.write_glb(gltf.GlbMesh(positions, faces, uvs, normals), path, texture=jpeg(), compression="none")
    model = pygltflib.GLTF2.load_binary(path)
    uv = model.accessors[model.meshes[0].primitives[0].attributes.TEXCOORD_0]
    assert uv.componentType == 5126 and not uv.normalized
    assert np.allclose(accessor(model, model.meshes[0].primitives[0].attributes.TEXCOORD_0), [[0, 1], [3, 1], [0, -1]])
    report = gltf_validator([path])[str(path)]
    assert report["errors"] == report["warnings"] == 0, report["messages"]
    from e2e3d_provider.exceptions import RightSizeInputError

    with pytest.raises(RightSizeInputError, match="at least one triangle"):
        gltf.write_glb(gltf.GlbMesh(positions, np.zeros((0, 3), dtype=np.int64)), tmp_path / "empty.glb")
    with pytest.raises(ValueError, match="compression must be one of"):
        gltf.write_glb(gltf.GlbMesh(positions, faces), tmp_path / "x.glb", compression="zip")
