"""A mesh's chain as a 3D Tiles 1.1 tileset (e2e3d_provider/rightsize/tiles.py, atlas.py) read back by
independent readers: the tileset check of tests/tileset_check.py (json + pygltflib + meshoptimizer's
decoders), the Khronos glTF validator on every tile and on each tile's uncompressed twin, and the texels a
tile's re-packed texture shows compared with the source texture's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pygltflib
import pytest
from PIL import Image

from bench.rightsize_data import make_results
from e2e3d_provider.lifecycle.results.rightsize import right_size_run
from e2e3d_provider.rightsize import atlas, gltf, tiles
from e2e3d_provider.rightsize import mesh as meshes
from e2e3d_provider.rightsize.policy import RightSizePolicy
from tests.tileset_check import accessor, check_tileset, walk_tiles

#: what the validator may say (as information) of a meshopt tile: it cannot look inside the streams, and a
#: re-packed texture's sides need not be powers of two (WebGL 2 samples such textures with mipmaps)
UNCHECKABLE = {"UNSUPPORTED_EXTENSION", "IMAGE_NPOT_DIMENSIONS"}
TILESET = "mesh/tiles/reconstructed_mesh/tileset.json"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("generated")
    make_results(root, "test")
    return root


@pytest.fixture(scope="module")
def chain(generated: Path) -> list[meshes.Level]:
    full = meshes.read_obj(generated / "mesh/reconstructed_mesh.obj")
    return meshes.lod_chain(full, (0.25, 0.06, 0.015), 5_000)


def tile_levels(chain: list[meshes.Level]) -> list[tiles.TileLevel]:
    return [
        tiles.TileLevel(
            step.mesh.positions,
            step.mesh.faces,
            step.mesh.uvs,
            gltf.vertex_normals(step.mesh.positions, step.mesh.faces, step.mesh.position_ids),
            step.samples,
        )
        for step in chain
    ]


@pytest.fixture(scope="module")
def quadtree(chain: list[meshes.Level], generated: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The test mesh (3,042 faces) tiled at 200 faces a tile, with meshopt and uncompressed twins."""
    out = {}
    with Image.open(generated / "textures/texture.png") as image:
        image = image.convert("RGB")
        for compression in ("meshopt", "none"):
            folder = tmp_path_factory.mktemp(compression)
            figures = tiles.build_tileset(
                tile_levels(chain), folder, image=image, tile_faces=200, texture_size=256, compression=compression
            )
            out[compression] = (folder, figures)
    return out


def test_the_tileset_refines_from_the_coarsest_level_to_the_original_over_a_quadtree(
    quadtree: dict, chain: list[meshes.Level]
) -> None:
    folder, figures = quadtree["meshopt"]
    assert check_tileset(folder / "tileset.json") == []
    tileset = json.loads((folder / "tileset.json").read_text())
    assert tileset["asset"]["version"] == "1.1" and tileset["root"]["refine"] == "REPLACE"
    by_depth: dict[int, list[dict]] = {}
    for depth, tile in walk_tiles(tileset):
        by_depth.setdefault(depth, []).append(tile)
    # a terrain (y-up, flat in y): x and z split, 2^k cells a side with about 200 faces a cell
    names = {d: sorted(t["content"]["uri"] for t in ts if "content" in t) for d, ts in by_depth.items()}
    assert names[0] == ["0/0_0.glb"] and names[1] == ["1/0_0.glb"]
    assert names[2] == [f"2/{i}_{j}.glb" for i in range(2) for j in range(2)]
    assert names[3] == [f"3/{i}_{j}.glb" for i in range(4) for j in range(4)]
    # each depth's tiles hold the whole of its level (coarsest at the root, the original at the leaves)
    for depth, uris in names.items():
        level = chain[3 - depth].mesh
        faces = [pygltflib.GLTF2.load_binary(folder / uri) for uri in uris]
        assert sum(g.accessors[g.meshes[0].primitives[0].indices].count // 3 for g in faces) == len(level.faces)
    assert all(t["geometricError"] == 0 for t in by_depth[3]) and min(t["geometricError"] for t in by_depth[2]) > 0
    assert figures["depth"] == 3 and len(figures["tiles"]) == 1 + 1 + 4 + 16
    assert figures["box"] == tileset["root"]["boundingVolume"]["box"]


def test_every_tile_validates_and_decodes_to_its_uncompressed_twin(quadtree: dict, gltf_validator) -> None:
    packed_folder, _ = quadtree["meshopt"]
    plain_folder, _ = quadtree["none"]
    packed = sorted(packed_folder.rglob("*.glb"))
    plain = [plain_folder / p.relative_to(packed_folder) for p in packed]
    assert len(packed) == 22 and all(p.is_file() for p in plain)
    reports = gltf_validator([*packed, *plain])
    for path in packed:
        report = reports[str(path)]
        assert report["errors"] == report["warnings"] == 0, (path, report["messages"])
        assert {m["code"] for m in report["messages"]} <= UNCHECKABLE, (path, report["messages"])
    for path in plain:
        report = reports[str(path)]
        assert (report["errors"], report["warnings"]) == (0, 0), (path, report["messages"])
    for a, b in zip(packed, plain, strict=True):
        one, two = pygltflib.GLTF2.load_binary(a), pygltflib.GLTF2.load_binary(b)
        for index in range(3):  # positions, normals, UVs: bit for bit
            assert np.array_equal(accessor(one, index, dequantize=False), accessor(two, index, dequantize=False))
        triangles = [np.sort(accessor(g, 3).reshape(-1, 3), axis=1) for g in (one, two)]
        assert np.array_equal(*triangles)  # the same triangles (the codec may rotate their corners)
        assert one.nodes[0].translation == two.nodes[0].translation and one.nodes[0].scale == two.nodes[0].scale


def test_a_tiles_error_is_the_largest_error_sample_measured_in_its_cell(quadtree: dict, chain: list) -> None:
    folder, figures = quadtree["meshopt"]
    full = chain[0].mesh.positions
    lo, hi = full.min(axis=0), full.max(axis=0)
    tileset = json.loads((folder / "tileset.json").read_text())
    error_of = {t["content"]["uri"]: t["geometricError"] for _, t in walk_tiles(tileset) if "content" in t}
    cells_a_side = {0: 1, 1: 1, 2: 2, 3: 4}
    for tile in figures["tiles"]:
        depth = int(tile["uri"].split("/")[0])
        i, j = map(int, tile["uri"].split("/")[1].removesuffix(".glb").split("_"))
        level = chain[3 - depth]
        assert tile["level"] == level.level
        if level.level == 0:
            assert tile["measured_error"] == tile["geometric_error"] == 0.0
            continue
        n = cells_a_side[depth]  # x and z split (y is the terrain's height)
        cell = np.floor((level.samples[:, [0, 2]] - lo[[0, 2]]) / (hi - lo)[[0, 2]] * n).clip(0, n - 1)
        mine = (cell[:, 0] == i) & (cell[:, 1] == j)
        assert mine.sum() == tile["samples"] > 0
        assert tile["measured_error"] == level.samples[mine, 3].max()  # the raw measured value
        assert tile["geometric_error"] == error_of[tile["uri"]] >= tile["measured_error"]
    # the whole level's figure (a fraction of the diagonal) is the largest of its tiles' measured errors
    diagonal = float(np.linalg.norm(hi - lo))
    for step in chain[1:]:
        measured = [t["measured_error"] for t in figures["tiles"] if t["level"] == step.level]
        assert max(measured) / diagonal == pytest.approx(step.error["hausdorff"])


def brute_force_distance(points: np.ndarray, mesh: meshes.Mesh, chunk: int = 100) -> np.ndarray:
    """Each point's distance to the nearest of every one of ``mesh``'s triangles (no search to trust)."""
    tri = mesh.positions[mesh.faces]
    out = np.empty(len(points))
    for start in range(0, len(points), chunk):
        here = points[start : start + chunk]
        pairs = np.repeat(here, len(tri), axis=0)
        closest = meshes.closest_on_triangles(pairs, np.tile(tri, (len(here), 1, 1)))
        out[start : start + chunk] = np.linalg.norm(pairs - closest, axis=1).reshape(len(here), -1).min(axis=1)
    return out


def test_a_levels_error_samples_are_the_exact_distances_to_the_other_surface(chain: list) -> None:
    """The coarsest level fans long thin triangles onto the terrain's locked border: a point's nearest
    triangle can have its centroid far away, and the error (what a tile's geometricError is) must still be
    the distance to the nearest triangle of all, not to the nearest among those with close centroids."""
    full, coarsest = chain[0].mesh, chain[-1]
    half = len(coarsest.samples) // 2
    on_full, on_lod = coarsest.samples[:half], coarsest.samples[half:]
    assert np.allclose(on_full[:, 3], brute_force_distance(on_full[:, :3], coarsest.mesh), rtol=1e-9, atol=1e-9)
    assert np.allclose(on_lod[:, 3], brute_force_distance(on_lod[:, :3], full), rtol=1e-9, atol=1e-9)


def test_the_distance_to_a_surface_finds_a_sliver_whose_centroid_is_far_away() -> None:
    """A point 0.1 above a long sliver (its centroid 130 away) and 1.0 below a patch of small triangles
    (their centroids close by): the sliver is the nearest surface, however many triangles sit nearer by
    centroid."""
    lin = np.linspace(-1.0, 1.0, 11)
    xs, zs = np.meshgrid(lin, lin)
    grid = np.stack([xs.ravel(), np.full(xs.size, -1.0), zs.ravel()], axis=1)
    a = (np.arange(10)[:, None] * 11 + np.arange(10)).ravel()
    patch = np.concatenate([np.stack([a, a + 11, a + 1], 1), np.stack([a + 1, a + 11, a + 12], 1)])
    sliver = np.array([[-1.0, 0.1, 0.0], [200.0, 0.1, -0.01], [200.0, 0.1, 0.01]])
    positions = np.vstack([grid, sliver])
    faces = np.vstack([patch, [[121, 122, 123]]])
    points = np.array([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, -0.5, 0.3]])
    distances = meshes.distance_to_surface(points, meshes.Mesh(positions, faces))
    assert np.allclose(distances, [0.1, 0.1, 0.5], rtol=1e-9)
    assert np.allclose(distances, brute_force_distance(points, meshes.Mesh(positions, faces)), rtol=1e-12)


def test_a_tiles_texture_shows_the_same_texels_and_its_uvs_stay_in_the_unit_square(
    quadtree: dict, chain: list, generated: Path
) -> None:
    """A terrain's tile samples one planar island: the crop of its rectangle, unscaled, shows the source's
    texels at every face centre."""
    level = chain[0].mesh
    with Image.open(generated / "textures/texture.png") as source:
        source = source.convert("RGB")
        centres = level.positions[level.faces].mean(axis=1)
        faces = level.faces[(centres[:, 0] < -20) & (centres[:, 2] < -20)]  # a corner of the terrain (-50..50)
        used, local = np.unique(faces, return_inverse=True)
        result = atlas.repack(source, local.reshape(-1, 3), level.uvs[used], size=4096)  # no scaling
        assert not result.packed and result.islands == 1
        assert result.uvs.min() >= 0 and result.uvs.max() <= 1
        assert result.image.width * result.image.height < source.width * source.height / 4
        centres_old = level.uvs[used][local.reshape(-1, 3)].mean(axis=1)
        centres_new = result.uvs[local.reshape(-1, 3)].mean(axis=1)
        assert np.array_equal(texels(source, centres_old), texels(result.image, centres_new))


def texels(image: Image.Image, uvs: np.ndarray) -> np.ndarray:
    """The texel colours at OBJ-convention UVs (v up), nearest texel."""
    pixels = np.asarray(image)
    x = np.clip((uvs[:, 0] * image.width).astype(int), 0, image.width - 1)
    y = np.clip(((1 - uvs[:, 1]) * image.height).astype(int), 0, image.height - 1)
    return pixels[y, x]


def test_scattered_uv_islands_are_shelf_packed_into_a_small_atlas_showing_the_same_texels() -> None:
    """Six small quads mapping far-apart corners of a 512 px texture (what an unwrapped photogrammetry
    mesh's charts look like): the union would be most of the texture; the shelf packs only the islands."""
    rng = np.random.default_rng(11)
    blocks = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)  # 8 x 8 px blocks of one colour each
    source = Image.fromarray(np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8)))
    corners = [(0.02, 0.02), (0.8, 0.05), (0.1, 0.85), (0.85, 0.85), (0.45, 0.5), (0.6, 0.2)]
    uvs, faces = [], []
    for k, (u, v) in enumerate(corners):
        side = 0.06 + 0.02 * k
        base = len(uvs)
        uvs += [(u, v), (u + side, v), (u + side, v + side), (u, v + side)]
        faces += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
    uvs_array, faces_array = np.array(uvs), np.array(faces)
    result = atlas.repack(source, faces_array, uvs_array, size=4096)
    assert result.packed and result.islands == 6
    assert result.uvs.min() >= 0 and result.uvs.max() <= 1
    assert result.image.width * result.image.height < 0.3 * 512 * 512
    # sample points inside each quad (away from block edges): same colour in the atlas as in the source
    inner = []
    for k, (u, v) in enumerate(corners):
        side = 0.06 + 0.02 * k
        for a in (0.25, 0.5, 0.75):
            for b in (0.25, 0.5, 0.75):
                inner.append((k, u + a * side, v + b * side))
    for k, u, v in inner:
        quad = uvs_array[4 * k : 4 * k + 4]
        new = result.uvs[4 * k : 4 * k + 4]
        a, b = (u - quad[0, 0]) / (quad[1, 0] - quad[0, 0]), (v - quad[0, 1]) / (quad[3, 1] - quad[0, 1])
        mapped = new[0] + a * (new[1] - new[0]) + b * (new[3] - new[0])
        assert np.array_equal(texels(source, np.array([[u, v]])), texels(result.image, mapped[None, :])), (k, u, v)
    # a budget smaller than the packed strip scales it down, UVs still in the unit square
    small = atlas.repack(source, faces_array, uvs_array, size=64)
    assert max(small.image.size) <= 64 and small.uvs.min() >= 0 and small.uvs.max() <= 1


def test_the_lifecycles_right_sizing_publishes_a_tileset_the_independent_readers_accept(
    generated: Path, tmp_path: Path, gltf_validator
) -> None:
    run = tmp_path / "run"
    shutil.copytree(generated, run)
    record = right_size_run(run, RightSizePolicy(mesh_error_samples=5_000, tile_faces=400))
    assert check_tileset(run / TILESET) == []
    stream = {v.path: v for v in record.variants if v.role == "stream" and v.path.startswith("mesh/")}
    tileset = stream.pop(TILESET)
    assert tileset.level is None and tileset.figures["format"] == "3dtiles"
    assert tileset.figures["tiles"] == len(stream) == len(list((run / TILESET).parent.rglob("*.glb")))
    assert tileset.figures["bytes"] == (run / TILESET).stat().st_size
    root_box = json.loads((run / TILESET).read_text())["root"]["boundingVolume"]["box"]
    assert tileset.figures["box"] == root_box and len(root_box) == 12
    for path, tile in stream.items():
        assert tile.figures["format"] == "3dtiles-tile" and tile.figures["compression"] == "meshopt"
        assert tile.figures["bytes"] == (run / path).stat().st_size and tile.figures["texture_px"] > 0
        assert {"faces", "vertices", "geometric_error", "measured_error"} <= set(tile.figures)
    web = [run / v.path for v in record.variants if v.role == "web" and v.path.endswith(".glb")]
    reports = gltf_validator([*(run / p for p in stream), *web])
    assert len(reports) == len(stream) + 4
    for path, report in reports.items():
        assert report["errors"] == report["warnings"] == 0, (path, report["messages"])
    # the tiles are off with mesh_tiles=false; the web GLBs can be Draco
    again = right_size_run(
        run, RightSizePolicy(mesh_error_samples=2_000, mesh_tiles=False, web_glb_compression="draco")
    )
    assert not (run / "mesh/tiles").exists()
    assert not any(v.role == "stream" and v.path.startswith("mesh/") for v in again.variants)
    glb = pygltflib.GLTF2.load_binary(run / "mesh/lod1/reconstructed_mesh.glb")
    assert glb.extensionsRequired == ["KHR_draco_mesh_compression"] and glb.images[0].bufferView is not None


def test_the_tileset_check_finds_what_is_broken(quadtree: dict, tmp_path: Path) -> None:
    folder, _ = quadtree["meshopt"]

    def broken(change) -> list[str]:
        copy = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(folder, copy)
        tileset = json.loads((copy / "tileset.json").read_text())
        change(tileset, copy)
        (copy / "tileset.json").write_text(json.dumps(tileset))
        return check_tileset(copy / "tileset.json")

    def child(tileset: dict) -> dict:
        return tileset["root"]["children"][0]

    def grow_child_box(t: dict, _: Path) -> None:
        child(t)["boundingVolume"]["box"][3] *= 2

    def raise_child_error(t: dict, _: Path) -> None:
        child(t)["geometricError"] = t["root"]["geometricError"] * 2

    def shrink_content_box(t: dict, _: Path) -> None:
        box = child(t)["boundingVolume"]["box"]
        box[3], box[7] = box[3] / 2, box[7] / 2

    def leaf_with_error(t: dict, _: Path) -> None:
        leaf = next(tile for _, tile in walk_tiles(t) if not tile.get("children"))
        leaf["geometricError"] = 1.0

    def lose_a_file(_: dict, copy: Path) -> None:
        (copy / "3/0_0.glb").unlink()

    def orphan(_: dict, copy: Path) -> None:
        shutil.copy(copy / "3/0_0.glb", copy / "3/9_9.glb")

    def escape(t: dict, _: Path) -> None:
        t["root"]["content"]["uri"] = "../meshopt/0/0_0.glb"

    def old_version(t: dict, _: Path) -> None:
        t["asset"]["version"] = "1.0"

    cases = {
        grow_child_box: "its box is not inside its parent's",
        raise_child_error: "exceeds its parent's",
        shrink_content_box: "lie outside the tile's box",
        leaf_with_error: "a leaf with geometricError 1.0",
        lose_a_file: "'3/0_0.glb' does not resolve",
        orphan: "3/9_9.glb is in the tileset's folder but no tile names it",
        escape: "leaves the tileset's folder",
        old_version: "asset.version is '1.0'",
    }
    for change, message in cases.items():
        problems = broken(change)
        assert any(message in p for p in problems), (change.__name__, problems)


def test_a_mesh_without_uvs_in_a_relative_run_dir_gets_untextured_glbs_and_tiles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gltf_validator
) -> None:
    """The worker runs in a temporary folder of its own: a run directory given relative to the task's
    working directory still receives the files (they once went to the worker's folder and were lost)."""
    n = 30
    rows = [f"v {i} {np.sin(i * 0.3) + np.cos(j * 0.2):.6f} {j}" for j in range(n) for i in range(n)]
    for j in range(n - 1):
        for i in range(n - 1):
            a, b, c, d = j * n + i + 1, j * n + i + 2, (j + 1) * n + i + 1, (j + 1) * n + i + 2
            rows += [f"f {a} {d} {b}", f"f {a} {c} {d}"]
    (tmp_path / "run/mesh").mkdir(parents=True)
    (tmp_path / "run/mesh/m.obj").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    record = right_size_run(Path("run"), RightSizePolicy(mesh_error_samples=2_000, tile_faces=300))
    glbs = [v for v in record.variants if v.path.endswith(".glb")]
    assert len(glbs) == 4 + record.variants[-1].figures["tiles"] > 4 + 1
    assert all((tmp_path / "run" / v.path).is_file() for v in glbs)
    assert all(v.figures.get("texture") is None and v.figures.get("texture_px", 0) == 0 for v in glbs)
    assert check_tileset(tmp_path / "run/mesh/tiles/m/tileset.json") == []
    reports = gltf_validator([tmp_path / "run" / v.path for v in glbs])
    assert {(r["errors"], r["warnings"]) for r in reports.values()} == {(0, 0)}
