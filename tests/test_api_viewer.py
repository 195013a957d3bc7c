"""The results API's routes for the 3D viewer, over real HTTP on the real stack: the job list
(``/api/v1/jobs``), the job a DAG run owns (``/api/v1/jobs?dag_id=&run_id=``) and a job's scene
(``/api/v1/jobs/{id}/scene``: its mesh tilesets and COPC point clouds with their file routes, from the published
manifest's figures)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from urllib.parse import quote, urljoin

import httpx
import pytest

from e2e3d_provider.core.variants import RightSizeRecord, Variant
from e2e3d_provider.hooks.metadata import MAX_LISTED_JOBS, MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.results.publish import publish_run
from e2e3d_provider.lifecycle.results.record import begin_run
from tests.helpers import as_user, edit_first_file, forge_manifest, write_files

STAMP, NEWER = "20261124T120000Z", "20261125T120000Z"
OBJ, PLY = "mesh/reconstructed_mesh.obj", "pointcloud/pointcloud.ply"
TILES = "mesh/tiles/reconstructed_mesh"
TILESET, ROOT_TILE, CHILD_TILE = f"{TILES}/tileset.json", f"{TILES}/0/0_0.glb", f"{TILES}/1/1_0.glb"
COPC, WEB_GLB = "pointcloud/web/pointcloud.copc.laz", "mesh/lod1/reconstructed_mesh.glb"
ROOT_BOX = [0.5, -0.5, 0.25, 0.5, 0, 0, 0, 0.5, 0, 0, 0, 0.25]
CUBE = [0.5, 0.25, 0.5, 0.5]


def streamed_run(label: str) -> tuple[dict[str, bytes], RightSizeRecord]:
    """A run as right-sizing leaves it for a viewer: a tileset naming its tiles by relative URIs, a COPC file,
    a web GLB, recorded (roles, levels, figures) in rightsize.json as the contract between the parts says."""
    tileset = {
        "asset": {"version": "1.1", "generator": "e2e3d-provider"},
        "geometricError": 2.0,
        "root": {
            "boundingVolume": {"box": ROOT_BOX},
            "geometricError": 0.125,
            "refine": "REPLACE",
            "content": {"uri": "0/0_0.glb"},
            "children": [{"boundingVolume": {"box": ROOT_BOX}, "geometricError": 0, "content": {"uri": "1/1_0.glb"}}],
        },
    }
    files = {
        OBJ: b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n",
        PLY: b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n",
        TILESET: json.dumps(tileset).encode(),
        ROOT_TILE: b"glTF root tile of " + label.encode(),
        CHILD_TILE: b"glTF child tile of " + label.encode(),
        COPC: b"LASF" + bytes(range(256)) * 8,
        WEB_GLB: b"glTF web GLB",
    }
    tile = {"format": "3dtiles-tile", "faces": 1, "vertices": 3, "texture_px": 0, "compression": "meshopt"}
    root = {"format": "3dtiles", "tiles": 2, "depth": 1, "geometric_error": 0.125, "box": ROOT_BOX}
    record = RightSizeRecord(
        variants=[
            Variant(TILESET, "stream", OBJ, 0, {**root, "bytes": len(files[TILESET])}),
            Variant(ROOT_TILE, "stream", OBJ, 1, {**tile, "geometric_error": 0.125, "measured_error": 0.1}),
            Variant(CHILD_TILE, "stream", OBJ, 0, {**tile, "geometric_error": 0, "measured_error": 0}),
            Variant(COPC, "stream", PLY, 0, {"format": "copc", "points": 2048, "nodes": 9, "depth": 1,
                                             "spacing": 0.0078125, "cube": CUBE, "bytes": len(files[COPC])}),
            Variant(WEB_GLB, "web", OBJ, 1, {"faces": 1, "compression": "meshopt", "normals": True}),
        ]
    )  # fmt: skip
    return files, record


def publish(
    storage: StorageHook,
    metadata: MetadataHook,
    run: Path,
    job_id: str,
    files: dict[str, bytes],
    record: RightSizeRecord | None = None,
    stamp: str = STAMP,
    dataset: str = "ds1",
) -> None:
    """Through the real publish path: the run directory, its rightsize.json, manifest and SUCCESS."""
    write_files(run, files)
    if record is not None:
        record.write(run)
    publish_run(storage, run, job_id, stamp, "output")
    metadata.record_job(job_id, stamp, dataset, "running")
    metadata.record_job(job_id, stamp, dataset, "succeeded")


@pytest.fixture
def streamed_job(storage: StorageHook, metadata: MetadataHook, tmp_path: Path, unique_id: str) -> dict[str, bytes]:
    files, record = streamed_run(unique_id)
    publish(storage, metadata, tmp_path / "run", unique_id, files, record)
    return files


def scene_url(api: str, job_id: str) -> str:
    return f"{api}/api/v1/jobs/{job_id}/scene"


def test_the_scene_lists_each_tileset_and_copc_with_its_route_and_figures(
    api: str, unique_id: str, streamed_job: dict[str, bytes]
) -> None:
    viewer = as_user("viewer")
    answer = httpx.get(scene_url(api, unique_id), headers=viewer)
    assert answer.status_code == 200, answer.text
    routes = f"/api/v1/jobs/{unique_id}/files"
    assert answer.json() == {
        "job_id": unique_id,
        "stamp": STAMP,
        "tilesets": [
            {"path": TILESET, "route": f"{routes}/{TILESET}", "geometric_error": 0.125, "box": ROOT_BOX},
        ],
        "pointclouds": [{"path": COPC, "route": f"{routes}/{COPC}", "points": 2048, "cube": CUBE}],
        "up": "y",
    }  # the tiles (the tileset names them) and the web GLB are not listed

    # what a viewer does next: the tileset through its route, its tiles by their relative URIs, COPC by ranges
    tileset_url = urljoin(api, answer.json()["tilesets"][0]["route"])
    tileset = httpx.get(tileset_url, headers=viewer, follow_redirects=True)
    assert tileset.status_code == 200 and tileset.content == streamed_job[TILESET]
    for uri, path in ((tileset.json()["root"]["content"]["uri"], ROOT_TILE),
                      (tileset.json()["root"]["children"][0]["content"]["uri"], CHILD_TILE)):  # fmt: skip
        tile = httpx.get(urljoin(tileset_url, uri), headers=viewer, follow_redirects=True)
        assert tile.status_code == 200 and tile.content == streamed_job[path], uri
    copc_url = urljoin(api, answer.json()["pointclouds"][0]["route"])
    part = httpx.get(copc_url, headers={**viewer, "Range": "bytes=0-374"}, follow_redirects=True)
    assert part.status_code == 206 and part.content == streamed_job[COPC][:375]


def test_the_scene_route_refuses_as_the_results_route_does(
    api: str, storage: StorageHook, metadata: MetadataHook, tmp_path: Path, unique_id: str
) -> None:
    viewer = as_user("viewer")
    assert httpx.get(scene_url(api, unique_id)).status_code == 401
    assert httpx.get(scene_url(api, "a..b"), headers=viewer).status_code == 422
    unknown = httpx.get(scene_url(api, unique_id), headers=viewer)
    assert unknown.status_code == 404 and "unknown job" in unknown.json()["detail"]

    metadata.record_job(unique_id, STAMP, "ds1", "running")  # known, nothing published yet
    incomplete = httpx.get(scene_url(api, unique_id), headers=viewer)
    assert incomplete.status_code == 409 and "no SUCCESS" in incomplete.json()["detail"]

    plain = f"{unique_id}-plain"  # published without right-sizing: nothing to stream
    publish(storage, metadata, tmp_path / "plain", plain, {OBJ: b"v 0 0 0\n", PLY: b"ply\n"})
    nothing = httpx.get(scene_url(api, plain), headers=viewer)
    assert nothing.status_code == 404, nothing.text
    assert "nothing a 3D viewer streams" in nothing.json()["detail"] and "right-sizing" in nothing.json()["detail"]

    files, record = streamed_run(unique_id)
    publish(storage, metadata, tmp_path / "run", unique_id, files, record)
    assert httpx.get(scene_url(api, unique_id), headers=viewer).status_code == 200
    metadata.record_job(unique_id, STAMP, "ds1", "damaged", error="scrub: a tile is missing")
    damaged = httpx.get(scene_url(api, unique_id), headers=viewer)
    assert damaged.status_code == 409 and "is damaged" in damaged.json()["detail"]


@pytest.mark.parametrize(
    ("figures", "complaint"),
    [
        ({"format": "3dtiles", "geometric_error": 0.5, "box": [0, 0, 0]}, "figure 'box' must be 12 finite numbers"),
        ({"format": "3dtiles", "box": ROOT_BOX}, "figure 'geometric_error' must be a number >= 0"),
        ({"format": "copc", "points": 1.5, "cube": CUBE}, "figure 'points' must be a whole number >= 0"),
        ({"format": "copc", "points": 10, "cube": [0, 0, 0, True]}, "figure 'cube' must be 4 finite numbers"),
    ],
)
def test_a_stored_scene_entry_without_its_figures_is_409_naming_the_file(
    api: str, storage: StorageHook, unique_id: str, streamed_job: dict, figures: dict, complaint: str
) -> None:
    forge_manifest(storage, unique_id, edit_first_file({"role": "stream", "figures": figures}))
    answer = httpx.get(scene_url(api, unique_id), headers=as_user("viewer"))
    assert answer.status_code == 409, answer.text
    assert complaint in answer.json()["detail"], answer.json()


def test_jobs_are_listed_once_each_newest_first_filtered_and_bounded(
    api: str, storage: StorageHook, metadata: MetadataHook, tmp_path: Path, unique_id: str
) -> None:
    viewer, dataset = as_user("viewer"), f"ds-{unique_id}"
    first, second, refailed = (f"{unique_id}-{n}" for n in ("a", "b", "c"))
    files, record = streamed_run(unique_id)
    for job in (first, refailed, second):  # second is the most recently updated
        publish(storage, metadata, tmp_path / job, job, files, record, dataset=dataset)
    metadata.record_job(refailed, NEWER, dataset, "running")  # its newest run failed: not "succeeded" any more
    metadata.record_job(refailed, NEWER, dataset, "failed", error="reconstruct exited 1")

    def listed(**params: object) -> list[dict]:
        answer = httpx.get(f"{api}/api/v1/jobs", params={"dataset": dataset, **params}, headers=viewer)
        assert answer.status_code == 200, answer.text
        return answer.json()["jobs"]

    every = listed()
    assert [(j["job_id"], j["stamp"], j["status"]) for j in every] == [
        (refailed, NEWER, "failed"),
        (second, STAMP, "succeeded"),
        (first, STAMP, "succeeded"),
    ]  # each job once, as its newest run (what /results and /scene serve), most recently updated first
    assert every[1]["dataset"] == dataset and every[1]["created_at"]
    assert every[0]["error"] == "reconstruct exited 1"
    assert [j["job_id"] for j in listed(status="succeeded")] == [second, first]
    assert [j["job_id"] for j in listed(status="succeeded", limit=1)] == [second]
    assert listed(status="archived") == []
    assert httpx.get(f"{api}/api/v1/jobs", params={"limit": 5}, headers=viewer).status_code == 200  # every dataset

    for params, words in (
        ({"status": "done"}, "unknown job status 'done'"),
        ({"dataset": "a..b"}, "dataset"),
        ({"limit": 0}, ""),
        ({"limit": MAX_LISTED_JOBS + 1}, ""),
    ):
        refused = httpx.get(f"{api}/api/v1/jobs", params=params, headers=viewer)
        assert refused.status_code == 422 and words in refused.text, (params, refused.text)
    assert httpx.get(f"{api}/api/v1/jobs").status_code == 401


def test_a_dag_run_finds_its_job_and_a_run_without_one_lists_none(
    api: str, metadata: MetadataHook, unique_id: str
) -> None:
    viewer, dag_id = as_user("viewer"), "e2e3d_reconstruction"
    run_id = f"manual__2026-12-05T00:00:00.{uuid.uuid4().int % 10**6:06d}+00:00"  # ':' and '+' in it, as Airflow's
    begin_run(metadata, unique_id, STAMP, "ds1", run_id, dag_id)
    by_run = f"{api}/api/v1/jobs"
    answer = httpx.get(by_run, params={"dag_id": dag_id, "run_id": run_id, "limit": 1}, headers=viewer)
    assert answer.status_code == 200, answer.text
    (body,) = answer.json()["jobs"]
    assert (body["job_id"], body["stamp"], body["status"]) == (unique_id, STAMP, "running")
    assert (body["dag_id"], body["dag_run_id"]) == (dag_id, run_id)
    # the same URL the "View" link and the run's "3D view" tab lead to, spelled with %-escapes
    escaped = f"{by_run}?dag_id={dag_id}&run_id={quote(run_id, safe='')}"
    assert [j["job_id"] for j in httpx.get(escaped, headers=viewer).json()["jobs"]] == [unique_id]

    other = httpx.get(by_run, params={"dag_id": dag_id, "run_id": run_id + "x"}, headers=viewer)
    assert other.status_code == 200 and other.json() == {"jobs": [], "next_cursor": None}
    assert httpx.get(by_run, params={"dag_id": dag_id, "run_id": ""}, headers=viewer).status_code == 422
    assert httpx.get(by_run, params={"dag_id": dag_id, "run_id": run_id}).status_code == 401
    # the old path answers 308 to the new one, which the viewer of before followed
    old = httpx.get(f"{api}/api/jobs/by-run", params={"dag_id": dag_id, "run_id": run_id}, headers=viewer)
    assert old.status_code == 308, old.text
    location = old.headers["location"]
    assert location.startswith("/api/v1/jobs?dag_id=") and location.endswith("&limit=1"), location
    assert [j["job_id"] for j in httpx.get(f"{api}{location}", headers=viewer).json()["jobs"]] == [unique_id]
