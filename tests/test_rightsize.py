"""Right-sizing on small generated results (bench/rightsize_data.py at test scale): every variant is
opened by an independent reader (trimesh, pygltflib + meshoptimizer's decoder, Pillow) and holds the
faces, pixels and points its record names; bad input is refused clearly and loses nothing; publish
carries the variants in its manifest and PostgreSQL, and the results API serves them."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pygltflib
import pytest
import trimesh
from PIL import Image

from bench.rightsize_data import make_results
from e2e3d_provider.core.layout import VARIANTS_NAME
from e2e3d_provider.core.variants import RightSizeRecord
from e2e3d_provider.exceptions import ManifestError, RightSizeInputError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.results.publish import publish_run
from e2e3d_provider.lifecycle.results.rightsize import right_size_job, right_size_run
from e2e3d_provider.rightsize import pointcloud as clouds
from e2e3d_provider.rightsize import texture as texture_module
from e2e3d_provider.rightsize.policy import RightSizePolicy
from tests.helpers import as_user, digests, load_textured, write_files
from tests.tileset_check import accessor

STAMP = "20261202T080000Z"
#: small thresholds so test-sized data exercises every variant (tiles included)
POLICY = RightSizePolicy(mesh_error_samples=5_000, tile_threshold=1024, tile_size=512, mip_min_size=128)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Test-scale results, made once; tests copy them."""
    root = tmp_path_factory.mktemp("generated")
    make_results(root, "test")
    return root


@pytest.fixture
def run_dir(generated: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(generated, target)
    return target


def glb_faces(path: Path) -> int:
    """Faces of a self-contained GLB as pygltflib and meshoptimizer's decoder see them (its normals, UVs
    and embedded JPEG present, every index naming a vertex)."""
    gltf = pygltflib.GLTF2.load_binary(path)
    primitive = gltf.meshes[0].primitives[0]
    assert "EXT_meshopt_compression" in gltf.extensionsRequired
    indices = accessor(gltf, primitive.indices)
    positions = accessor(gltf, primitive.attributes.POSITION)
    assert indices.max() < len(positions) == len(accessor(gltf, primitive.attributes.NORMAL))
    assert len(accessor(gltf, primitive.attributes.TEXCOORD_0)) == len(positions)
    image = gltf.images[
        gltf.textures[gltf.materials[primitive.material].pbrMetallicRoughness.baseColorTexture.index].source
    ]
    assert image.uri is None and image.mimeType == "image/jpeg"  # embedded: no file beside it is needed
    return len(indices) // 3


def test_a_mesh_becomes_a_lod_chain_of_objs_sharing_the_texture_and_self_contained_glbs(run_dir: Path) -> None:
    record = right_size_run(run_dir, POLICY)
    original = trimesh.load(run_dir / "mesh/reconstructed_mesh.obj", force="mesh", process=False)
    assert record.originals["mesh/reconstructed_mesh.obj"]["faces"] == len(original.faces) == 3042
    lods = sorted(
        (v for v in record.variants if v.source.startswith("mesh/") and v.role != "stream"),
        key=lambda v: (v.level, v.path),
    )
    mtls = [v for v in lods if v.path.endswith(".mtl")]
    assert [(v.path, v.source) for v in mtls] == [
        (f"mesh/lod{n}/reconstructed_mesh.mtl", "mesh/reconstructed_mesh.mtl") for n in (1, 2, 3)
    ]
    objs = [v for v in lods if v.path.endswith(".obj")]
    glbs = [v for v in lods if v.path.endswith(".glb")]
    assert [v.level for v in objs] == [1, 2, 3] and [v.level for v in glbs] == [0, 1, 2, 3]
    assert all(v.role == "lod" for v in objs) and all(v.role == "web" for v in glbs)
    faces = [len(original.faces)]
    for obj in objs:
        mesh = load_textured(run_dir / obj.path)  # through its MTL, the original texture
        assert len(mesh.faces) == obj.figures["faces"] < faces[-1]
        assert mesh.visual.material.image is not None and mesh.visual.material.image.size == (1100, 1100)
        assert 0 < obj.figures["mean_distance"] <= obj.figures["hausdorff"] < 0.25
        faces.append(len(mesh.faces))
        # simplification keeps original vertices, so every (position, uv) of a LOD is one of the original's
        lod_pairs = np.round(np.hstack([mesh.vertices, mesh.visual.uv]), 4)
        full_pairs = {tuple(p) for p in np.round(np.hstack([original.vertices, original.visual.uv]), 4)}
        assert all(tuple(p) in full_pairs for p in lod_pairs)
    assert objs[0].figures["hausdorff"] < objs[-1].figures["hausdorff"]  # coarser strays further
    for glb in glbs:
        assert glb_faces(run_dir / glb.path) == glb.figures["faces"]
        assert glb.figures["bytes"] == (run_dir / glb.path).stat().st_size
        assert (glb.figures["compression"], glb.figures["normals"], glb.figures["texture"]) == (
            "meshopt",
            True,
            "embedded",
        )
    assert glbs[0].figures["faces"] == len(original.faces)
    assert [v.figures["texture_px"] for v in glbs] == [1100 * 1100, 550 * 550, 275 * 275, 275 * 275]


def test_a_texture_gets_a_lossless_png_a_web_variant_mips_and_indexed_tiles(run_dir: Path) -> None:
    record = right_size_run(run_dir, POLICY)
    source = run_dir / "textures/texture.png"
    by_path = {v.path: v for v in record.variants if v.source == "textures/texture.png"}
    optimized = by_path["textures/lod0/texture.png"]
    assert optimized.figures["bytes"] < source.stat().st_size
    with Image.open(source) as a, Image.open(run_dir / optimized.path) as b:
        assert a.size == b.size and a.convert("RGB").tobytes() == b.convert("RGB").tobytes()  # bit-identical
    web = by_path["textures/web/texture.jpg"]
    with Image.open(run_dir / web.path) as image:
        assert image.format == "JPEG" and image.size == (1100, 1100) == (web.figures["width"], web.figures["height"])
    assert texture_module.optimize_png(source, run_dir / "again.png", min_gain=0.99) is None  # not worth a copy
    assert not (run_dir / "again.png").exists()
    mips = sorted((v for v in by_path.values() if v.role == "lod" and v.level > 0), key=lambda v: v.level)
    assert [v.figures["width"] for v in mips] == [550, 275, 138]
    for mip in mips:
        with Image.open(run_dir / mip.path) as image:
            assert image.size == (mip.figures["width"], mip.figures["height"])
    index = json.loads((run_dir / "textures/tiles/index.json").read_text())
    tiles = [v for v in by_path.values() if v.role == "tile" and "row" in v.figures]
    assert len(index["tiles"]) == len(tiles) == by_path["textures/tiles/index.json"].figures["tiles"]
    for level in index["levels"]:  # the tiles of a level cover it exactly
        mine = [t for t in index["tiles"] if t["level"] == level["level"]]
        assert len(mine) == level["rows"] * level["cols"]
        assert sum(t["width"] * t["height"] for t in mine) == level["width"] * level["height"]
        for tile in mine:
            with Image.open(run_dir / tile["path"]) as image:
                assert image.size == (tile["width"], tile["height"]) and tile["width"] <= 512
    assert {t["level"] for t in index["tiles"]} == {0, 1}  # 1100 and 550 px are over 512; 275 is not


def test_a_point_cloud_becomes_binary_ply_and_voxel_lods_streaming_in_chunks(run_dir: Path, tmp_path: Path) -> None:
    record = right_size_run(run_dir, POLICY)
    ascii_cloud = trimesh.load(run_dir / "pointcloud/pointcloud.ply", process=False)
    variants = sorted((v for v in record.variants if v.path.endswith(".ply")), key=lambda v: v.level)
    binary = trimesh.load(run_dir / variants[0].path, process=False)
    assert variants[0].figures["points"] == len(binary.vertices) == 20_000
    assert np.array_equal(np.asarray(binary.vertices), np.asarray(ascii_cloud.vertices))  # same values, binary
    assert np.array_equal(binary.colors, ascii_cloud.colors)
    assert variants[0].figures["of_original"] < 0.4
    previous = 20_000
    for lod in variants[1:]:
        cloud = trimesh.load(run_dir / lod.path, process=False)
        assert len(cloud.vertices) == lod.figures["points"] < previous
        assert abs(lod.figures["kept"] - lod.figures["ratio"]) < lod.figures["ratio"]  # near the asked fraction
        assert (cloud.vertices.min(axis=0) >= ascii_cloud.vertices.min(axis=0) - 1e-4).all()
        previous = len(cloud.vertices)
    # streaming: tiny chunks give the same bytes as one chunk, and a cap bounds the accumulators
    header = clouds.read_header(run_dir / variants[0].path)
    assert header.format == "binary_little_endian"
    lower = np.asarray(ascii_cloud.vertices.min(axis=0), dtype=np.float64)
    size = variants[1].figures["voxel_size"]
    one = clouds.voxel_downsample(run_dir / variants[0].path, tmp_path / "one.ply", size, lower, 10**9)
    many = clouds.voxel_downsample(run_dir / variants[0].path, tmp_path / "many.ply", size, lower, 10**9, rows=777)
    assert one == many and (tmp_path / "one.ply").read_bytes() == (tmp_path / "many.ply").read_bytes()
    capped, used = clouds.voxel_downsample(run_dir / variants[0].path, tmp_path / "cap.ply", size, lower, 500, rows=999)
    assert capped <= 500 and used > size
    small = clouds.to_binary(run_dir / "pointcloud/pointcloud.ply", tmp_path / "chunked.ply", rows=333)
    assert (
        small.points == 20_000
        and (tmp_path / "chunked.ply").read_bytes()[-15:] == (run_dir / variants[0].path).read_bytes()[-15:]
    )


def test_right_sizing_twice_gives_the_same_variants_and_never_touches_an_original(run_dir: Path) -> None:
    before = digests(run_dir)
    first = right_size_run(run_dir, POLICY)
    after_first = digests(run_dir)
    second = right_size_run(run_dir, POLICY)
    assert {k: after_first[k] for k in before} == before  # originals untouched
    after_second = digests(run_dir)
    # the record (rightsize.json) holds timings, which may or may not differ between runs: not compared
    after_second.pop(VARIANTS_NAME), after_first.pop(VARIANTS_NAME)
    assert after_second == after_first  # deterministic variants, and no leftovers of the first run
    assert [v.path for v in first.variants] == [v.path for v in second.variants]
    off = right_size_run(run_dir, POLICY, enabled=False)  # turned off: variants go, the policy stays
    assert off.variants == [] and digests(run_dir).keys() == {*before, VARIANTS_NAME}


def _corrupt_obj(run: Path) -> None:
    (run / "mesh/reconstructed_mesh.obj").write_text("v 1 2 3\nv 1 2 x\nv 0 0 0\nf 1 2 3\n")


def _faceless_obj(run: Path) -> None:
    (run / "mesh/reconstructed_mesh.obj").write_text("v 1 2 3\nv 1 2 4\nv 0 0 0\n")


def _truncated_png(run: Path) -> None:
    path = run / "textures/texture.png"
    path.write_bytes(path.read_bytes()[:5000])


def _sixteen_bit_png(run: Path) -> None:
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)).save(run / "textures/texture.png")


def _nan_ply(run: Path) -> None:
    (run / "pointcloud/pointcloud.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
        "end_header\n0 0 0\n1 nan 1\n2 2 2\n"
    )


def _truncated_ply(run: Path) -> None:
    (run / "pointcloud/pointcloud.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 5\nproperty float x\nproperty float y\nproperty float z\n"
        "end_header\n0 0 0\n1 1 1\n"
    )


def _not_a_ply(run: Path) -> None:
    (run / "pointcloud/pointcloud.ply").write_bytes(b"\x89PNG not a point cloud at all")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_corrupt_obj, "not a number"),
        (_faceless_obj, "has no faces"),
        (_truncated_png, "not a readable image"),
        (_sixteen_bit_png, "pixel mode I;16 is not supported"),
        (_nan_ply, "point 1 has a NaN"),
        (_truncated_ply, "ends after 2 of 5 points"),
        (_not_a_ply, "is not a PLY file"),
    ],
)
def test_bad_input_is_refused_clearly_and_leaves_the_run_as_it_was(run_dir: Path, damage, message: str) -> None:
    damage(run_dir)
    before = digests(run_dir)
    with pytest.raises(RightSizeInputError, match=message):
        right_size_run(run_dir, POLICY)
    assert digests(run_dir) == before  # no variant, no record, originals byte for byte


def test_the_policy_refuses_what_it_does_not_know(run_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown right-sizing setting 'lod_ratio'"):
        RightSizePolicy.from_settings({"lod_ratio": [0.5]})
    with pytest.raises(ValueError, match="decreasing fractions"):
        RightSizePolicy(mesh_lod_ratios=(0.1, 0.5))
    with pytest.raises(ValueError, match="results are always published"):
        RightSizePolicy(preservation={"drop": ["mesh/"]})
    with pytest.raises(ValueError, match="web_format"):
        RightSizePolicy.from_settings({"web_format": "gif"})


def test_config_table_then_operator_settings_decide_the_policy(run_dir: Path, metadata: MetadataHook) -> None:
    metadata.set_config("rightsize", {"mesh_lod_ratios": [0.5], "pointcloud_lod_ratios": [0.5, 0.1]})
    try:
        record = right_size_job(run_dir, metadata, {"pointcloud_lod_ratios": [0.3], "mesh_error_samples": 2000})
    finally:
        metadata.set_config("rightsize", {})
    assert sorted(v.level for v in record.variants if v.path.startswith("mesh/") and v.path.endswith(".obj")) == [1]
    assert sorted(v.level for v in record.variants if v.path.startswith("pointcloud/lod")) == [0, 0, 1]  # PLY, LAZ


def test_publish_carries_variants_and_drops_temp_and_refuses_unrecorded_variants(
    run_dir: Path, storage: StorageHook, metadata: MetadataHook, unique_id: str
) -> None:
    write_files(run_dir, {"logs/run.log": b"ok\n", "temp/scratch.bin": b"x" * 100})
    record = right_size_run(run_dir, POLICY)
    stray = run_dir / "mesh/lod1/extra.obj"
    stray.write_text("v 0 0 0\n")
    with pytest.raises(ManifestError, match="not recorded by right-sizing"):
        publish_run(storage, run_dir, unique_id, STAMP, "output")
    assert not storage.exists("output", f"{unique_id}/SUCCESS")
    stray.unlink()
    published = publish_run(storage, run_dir, unique_id, STAMP, "output")
    manifest = json.loads(storage.get_bytes("output", published.manifest_key))
    assert manifest["dropped"] == [{"prefix": "temp/", "files": 1, "bytes": 100}]
    assert manifest["preservation"]["keep"] == ["logs/"]
    roles = {e["path"]: e["role"] for e in manifest["files"]}
    assert roles["logs/run.log"] == "intermediate" and "temp/scratch.bin" not in roles
    assert len(manifest["files"]) == len(record.variants) + 5  # 4 originals (mtl included) and the log
    assert not storage.exists("output", f"{unique_id}/temp/scratch.bin")
    assert not storage.exists("output", f"{unique_id}/{VARIANTS_NAME}")  # the record is not a result
    assert RightSizeRecord.read(run_dir) is not None


@pytest.fixture
def right_sized_job(run_dir: Path, storage: StorageHook, metadata: MetadataHook, unique_id: str) -> dict:
    right_size_run(run_dir, POLICY)
    publish_run(storage, run_dir, unique_id, STAMP, "output")
    metadata.record_job(unique_id, STAMP, "ds1", "running")
    metadata.record_job(unique_id, STAMP, "ds1", "succeeded")
    return {"run_dir": run_dir}


def test_the_api_groups_variants_by_original_and_picks_a_lod_or_the_web_variants(
    api: str,
    unique_id: str,
    right_sized_job: dict,
) -> None:
    url, headers = f"{api}/api/v1/jobs/{unique_id}/results", as_user("viewer")
    body = httpx.get(url, headers=headers).json()
    assert body["levels"] == [0, 1, 2, 3]
    groups = {g["original"]["path"]: g for g in body["results"]}
    assert set(groups) == {
        "mesh/reconstructed_mesh.obj",
        "mesh/reconstructed_mesh.mtl",
        "textures/texture.png",
        "pointcloud/pointcloud.ply",
    }
    mesh_variants = groups["mesh/reconstructed_mesh.obj"]["variants"]
    assert {v["level"] for v in mesh_variants if v["role"] != "stream"} == {0, 1, 2, 3}
    assert "mesh/tiles/reconstructed_mesh/tileset.json" in {v["path"] for v in mesh_variants if v["role"] == "stream"}

    lod1 = httpx.get(url, params={"lod": 1}, headers=headers).json()
    assert {f["path"] for f in lod1["files"]} == {
        "mesh/lod1/reconstructed_mesh.obj",
        "mesh/lod1/reconstructed_mesh.mtl",
        "mesh/lod1/reconstructed_mesh.glb",
        "textures/lod1/texture.jpg",
        "pointcloud/lod1/pointcloud.ply",
    }
    obj = next(f for f in lod1["files"] if f["path"].endswith(".obj"))
    assert groups["mesh/reconstructed_mesh.obj"]["original"]["role"] == "original"
    fetched = httpx.get(obj["url"])
    assert fetched.status_code == 200 and hashlib.sha256(fetched.content).hexdigest() == obj["sha256"]
    assert fetched.content.count(b"\nf ") == obj["figures"]["faces"]

    web = httpx.get(url, params={"variant": "web"}, headers=headers).json()
    assert {f["path"] for f in web["files"]} == {"mesh/lod0/reconstructed_mesh.glb", "textures/web/texture.jpg"}
    assert {g["original"]["path"] for g in web["results"]} == {"mesh/reconstructed_mesh.obj", "textures/texture.png"}

    index = next(f for f in body["files"] if f["path"] == "textures/tiles/index.json")
    assert len(index["tiles"]) == index["figures"]["tiles"]
    tile = index["tiles"][0]
    response = httpx.get(tile["url"])
    assert response.status_code == 200
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.size == (tile["width"], tile["height"])

    missing = httpx.get(url, params={"lod": 9}, headers=headers)
    assert missing.status_code == 404 and "levels: 0, 1, 2, 3" in missing.json()["detail"]
    assert httpx.get(url, params={"variant": "thumbnail"}, headers=headers).status_code == 422


def test_intermediates_marked_remove_after_archive_leave_output_once_archived(
    run_dir: Path, storage: StorageHook, unique_id: str
) -> None:
    from e2e3d_provider.lifecycle.durability.archive import archive_job
    from e2e3d_provider.lifecycle.results.published import read_published, verify_remote

    write_files(run_dir, {"logs/run.log": b"ok\n"})
    policy = RightSizePolicy(
        mesh_error_samples=2_000, preservation={"keep": ["logs/"], "remove_after_archive": ["logs/"]}
    )
    right_size_run(run_dir, policy, enabled=False)
    publish_run(storage, run_dir, unique_id, STAMP, "output")
    assert storage.exists("output", f"{unique_id}/logs/run.log")  # kept in output until archived
    result = archive_job(storage, unique_id)
    assert storage.exists("archive", result.archive_key + "logs/run.log")
    assert not storage.exists("output", f"{unique_id}/logs/run.log")
    published = read_published(storage, "output", unique_id)  # a SUCCESS over the smaller manifest
    assert "logs/run.log" not in {e.path for e in published.manifest.files}
    assert published.manifest.dropped == [
        {
            "prefix": "logs/",
            "files": 1,
            "bytes": 3,
            "after_archive": True,
            "archive_key": f"archive/{result.archive_key}",
        }
    ]
    verify_remote(storage, "output", f"{unique_id}/", published.manifest)  # what remains is whole


def test_the_operator_fails_bad_input_without_retry_and_names_the_file(run_dir: Path, connections: dict) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from e2e3d_provider.operators.rightsize import RightSizeOperator

    _nan_ply(run_dir)
    operator = RightSizeOperator(task_id="right_size", run_dir=str(run_dir), settings={"mesh_error_samples": 1000})
    with pytest.raises(AirflowFailException, match=r"pointcloud\.ply: point 1 has a NaN"):
        operator.execute({})
    assert not (run_dir / VARIANTS_NAME).exists() and not (run_dir / "mesh/lod1").exists()
    off = RightSizeOperator(task_id="off", run_dir=str(run_dir), enabled="false")  # as a rendered DAG param
    assert off.execute({}) == {
        "enabled": False,
        "variants": 0,
        "original_bytes": 0,
        "variant_bytes": 0,
        "seconds": 0,
        "dropped": ["temp/"],
    }
