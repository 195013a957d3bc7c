"""The results API's file route, ``GET|HEAD /api/v1/jobs/{job_id}/files/{path}``, over real HTTP on the real stack:
a redirect to a fresh short-lived pre-signed URL of one published file, so Range requests pass through to
object storage and what a file names by a relative path (an MTL's texture, a tileset's tiles) resolves
through the route too."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, urljoin, urlsplit

import httpx
import pytest
import requests
import urllib3

from e2e3d_provider.api.app import create_app
from e2e3d_provider.core.layout import archive_prefix
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.durability.archive import archive_and_record
from e2e3d_provider.lifecycle.durability.retention import apply_retention
from e2e3d_provider.lifecycle.results.publish import publish_run
from tests.helpers import as_user, edit_first_file, forge_manifest, serve, tiny_png, token, write_files
from tests.tileset_check import walk_tiles

STAMP, NEWER = "20261124T120000Z", "20261125T120000Z"
OBJ, MTL, PNG = "mesh/reconstructed_mesh.obj", "mesh/reconstructed_mesh.mtl", "textures/texture.png"
TILESET, TILE = "mesh/scene/tileset.json", "mesh/scene/0/0_0.glb"


def run_files(label: str) -> dict[str, bytes]:
    """A run whose files name each other by relative paths, as a viewer follows them: OBJ -> MTL -> PNG,
    tileset -> tile; and a log large enough for range requests."""
    return {
        OBJ: b"mtllib reconstructed_mesh.mtl\nusemtl surface\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nf 1/1 2/1 3/1\n",
        MTL: b"newmtl surface\nKd 1 1 1\nmap_Kd ../textures/texture.png\n",
        PNG: tiny_png(f"texture {label}"),
        TILESET: b'{"asset": {"version": "1.1"}, "geometricError": 1, '
        b'"root": {"geometricError": 0, "content": {"uri": "0/0_0.glb"}}}',
        TILE: b"glTF" + label.encode() * 8,
        "logs/run #1 (retry).log": b"a name a URL must escape\n",
        "logs/reconstruct.log": b"".join(b"line %06d of %s\n" % (i, label.encode()) for i in range(2000)),
    }


def publish(storage: StorageHook, metadata: MetadataHook, root: Path, job_id: str, files: dict, stamp: str = STAMP):
    write_files(root, files)
    publish_run(storage, root, job_id, stamp, "output")
    metadata.record_job(job_id, stamp, "ds1", "running")
    metadata.record_job(job_id, stamp, "ds1", "succeeded")


@pytest.fixture
def published_job(storage: StorageHook, metadata: MetadataHook, tmp_path: Path, unique_id: str) -> dict:
    files = run_files(unique_id)
    publish(storage, metadata, tmp_path / "run", unique_id, files)
    return files


def route(api: str, job_id: str, path: str) -> str:
    return f"{api}/api/v1/jobs/{job_id}/files/{path}"


def test_a_file_redirects_to_a_fresh_short_lived_presigned_url_on_the_storage_host(
    api: str, storage: StorageHook, unique_id: str, published_job: dict
) -> None:
    url = route(api, unique_id, PNG)
    answer = httpx.get(url, headers=as_user("viewer"))
    assert answer.status_code == 307, answer.text
    location = answer.headers["location"]
    assert urlsplit(location).netloc == urlsplit(storage.presign_endpoint_url).netloc
    assert urlsplit(location).path == f"/output/{unique_id}/{PNG}"
    assert parse_qs(urlsplit(location).query)["X-Amz-Expires"] == ["300"]  # short-lived by default
    assert answer.headers["cache-control"] == "private, max-age=60"
    fetched = httpx.get(location)  # a plain client, no credentials
    assert fetched.status_code == 200 and fetched.content == published_job[PNG]
    followed = httpx.get(url, headers=as_user("viewer"), follow_redirects=True)
    assert followed.status_code == 200 and followed.content == published_job[PNG]

    short = httpx.get(url, params={"expires": 1}, headers=as_user("viewer"))
    assert short.status_code == 307 and short.headers["cache-control"] == "private, max-age=0"
    assert parse_qs(urlsplit(short.headers["location"]).query)["X-Amz-Expires"] == ["1"]
    time.sleep(2.5)
    assert httpx.get(short.headers["location"]).status_code == 403  # expired
    # Each request signs afresh. Not expires=1 again: X-Amz-Date has whole seconds, so a 1 s URL signed at
    # hh:mm:ss.9 is already past its expiry 0.1 s later, when the redirect is followed (failed CI once).
    again = httpx.get(url, params={"expires": 5}, headers=as_user("viewer"), follow_redirects=True)
    assert [r.headers["location"] for r in again.history] != [short.headers["location"]]
    assert again.status_code == 200 and again.content == published_job[PNG]


def test_range_requests_pass_through_the_redirect(api: str, unique_id: str, published_job: dict) -> None:
    log = published_job["logs/reconstruct.log"]
    url = route(api, unique_id, "logs/reconstruct.log")
    part = httpx.get(url, headers={**as_user("viewer"), "Range": "bytes=1000-1999"}, follow_redirects=True)
    assert [r.status_code for r in part.history] == [307]
    assert part.status_code == 206 and part.content == log[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(log)}"
    # requests too (a COPC reader's HTTP client): it drops the Bearer token on the hop to the other port
    tail = requests.get(url, headers={**as_user("viewer"), "Range": "bytes=-100"}, timeout=30)
    assert tail.status_code == 206 and tail.content == log[-100:]


def test_head_redirects_to_a_url_signed_for_head(api: str, unique_id: str, published_job: dict) -> None:
    url = route(api, unique_id, TILE)
    answer = httpx.head(url, headers=as_user("viewer"))
    assert answer.status_code == 307 and answer.content == b""
    head = httpx.head(answer.headers["location"])
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(published_job[TILE])
    followed = httpx.head(url, headers=as_user("viewer"), follow_redirects=True)
    assert followed.status_code == 200 and int(followed.headers["content-length"]) == len(published_job[TILE])
    # the GET signature does not cover HEAD: the route signs each for its own method
    get_url = httpx.get(url, headers=as_user("viewer")).headers["location"]
    assert httpx.head(get_url).status_code == 403


def test_relative_references_resolve_through_the_route(api: str, unique_id: str, published_job: dict) -> None:
    """A client that loads the OBJ from the route and follows its relative references (as a browser or a
    viewer's loader does, against the URL it asked for) reaches the MTL and the texture through the route."""
    viewer = as_user("viewer")

    def fetch(url: str) -> bytes:
        answer = httpx.get(url, headers=viewer, follow_redirects=True)
        assert answer.status_code == 200 and [r.status_code for r in answer.history] == [307], url
        return answer.content

    obj_url = route(api, unique_id, OBJ)
    obj = fetch(obj_url)
    mtl_url = urljoin(obj_url, re.search(rb"^mtllib (\S+)$", obj, re.M).group(1).decode())
    assert mtl_url == route(api, unique_id, MTL)
    mtl = fetch(mtl_url)
    png_url = urljoin(mtl_url, re.search(rb"^map_Kd (\S+)$", mtl, re.M).group(1).decode())
    assert png_url == route(api, unique_id, PNG)
    assert fetch(png_url) == published_job[PNG]

    tileset_url = route(api, unique_id, TILESET)
    tile_url = urljoin(
        tileset_url, httpx.get(tileset_url, headers=viewer, follow_redirects=True).json()["root"]["content"]["uri"]
    )
    assert tile_url == route(api, unique_id, TILE) and fetch(tile_url) == published_job[TILE]


def test_the_results_listing_offers_the_route_beside_each_presigned_url(
    api: str, unique_id: str, published_job: dict
) -> None:
    body = httpx.get(f"{api}/api/v1/jobs/{unique_id}/results", headers=as_user("viewer")).json()
    assert {f["path"] for f in body["files"]} == set(published_job)
    for item in body["files"]:
        # the app's root (/e2e3d on Airflow's api-server), the path escaped
        assert item["route"] == f"/api/v1/jobs/{unique_id}/files/{quote(item['path'])}"
        fetched = httpx.get(urljoin(api, item["route"]), headers=as_user("viewer"), follow_redirects=True)
        assert fetched.content == published_job[item["path"]]
    assert any(f["route"].endswith("/files/logs/run%20%231%20%28retry%29.log") for f in body["files"])
    for group in body["results"]:
        assert group["original"]["route"].endswith(group["original"]["path"])


def test_authentication_and_permissions(api: str, unique_id: str, published_job: dict) -> None:
    url = route(api, unique_id, PNG)
    assert httpx.get(url).status_code == 401
    assert httpx.head(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403
    no_role = {"Authorization": f"Bearer {token('x', None)}"}
    assert httpx.get(url, headers=no_role).status_code == 403
    assert httpx.head(url, headers=no_role).status_code == 403
    # the UI's login cookie is enough: a page on the api-server's origin loads files with no header
    cookie = as_user("viewer")["Authorization"].removeprefix("Bearer ")
    assert httpx.get(url, cookies={"_token": cookie}).status_code == 307


def test_only_the_files_the_published_manifest_names_are_served(
    api: str, storage: StorageHook, unique_id: str, published_job: dict
) -> None:
    viewer = as_user("viewer")
    for path in ("metadata.json", "SUCCESS", "mesh/other.obj", "mesh", "mesh/scene/0"):
        missing = httpx.get(route(api, unique_id, path), headers=viewer)
        assert missing.status_code == 404 and "published no file" in missing.json()["detail"], path
        assert httpx.head(route(api, unique_id, path), headers=viewer).status_code == 404
    storage.put_bytes("output", f"{unique_id}/mesh/stray.obj", b"not published")  # stored, but no manifest names it
    assert httpx.get(route(api, unique_id, "mesh/stray.obj"), headers=viewer).status_code == 404
    unknown = httpx.get(route(api, f"{unique_id}-never", PNG), headers=viewer)
    assert unknown.status_code == 404 and "unknown job" in unknown.json()["detail"]


def test_bad_ids_paths_and_expiries_get_422(api: str, unique_id: str, published_job: dict) -> None:
    viewer = as_user("viewer")
    for path in ("mesh/%2E%2E/SUCCESS", "%2E%2E/other-job/SUCCESS", "mesh/%2E/x.obj", "mesh//x.obj", ""):
        refused = httpx.get(f"{api}/api/v1/jobs/{unique_id}/files/{path}", headers=viewer)
        assert refused.status_code == 422, (path, refused.status_code, refused.text)
    assert httpx.get(route(api, "a..b", PNG), headers=viewer).status_code == 422
    for expires in (0, 3601):
        assert httpx.get(route(api, unique_id, PNG), params={"expires": expires}, headers=viewer).status_code == 422


def test_bad_ids_and_paths_get_422_without_touching_storage_or_postgres(airflow_db, connections) -> None:
    """An app whose connections do not even exist: any access would fail with 5xx."""
    url, server, thread = serve(create_app("no_such_minio_conn", "no_such_metadata_conn"))
    try:
        viewer = as_user("viewer")
        assert httpx.get(f"{url}/api/v1/jobs/a..b/files/{PNG}", headers=viewer).status_code == 422
        assert httpx.get(f"{url}/api/v1/jobs/ok/files/mesh/%2E%2E/x", headers=viewer).status_code == 422
    finally:
        server.should_exit = True
        thread.join(10)


def test_damaged_incomplete_and_malformed_sets_get_409(
    api: str, storage: StorageHook, metadata: MetadataHook, unique_id: str, published_job: dict
) -> None:
    viewer = as_user("viewer")
    url = route(api, unique_id, PNG)
    assert httpx.get(url, headers=viewer).status_code == 307  # served (and remembered) first
    forge_manifest(storage, unique_id, edit_first_file({"path": "../other/mesh.obj"}))
    malformed = httpx.get(url, headers=viewer)
    assert malformed.status_code == 409 and "'..' segments" in malformed.json()["detail"], malformed.text

    storage.delete_object("output", f"{unique_id}/SUCCESS")  # a publish under way: no reader trusts the set
    incomplete = httpx.get(url, headers=viewer)
    assert incomplete.status_code == 409 and "no SUCCESS" in incomplete.json()["detail"]

    metadata.record_job(unique_id, STAMP, "ds1", "damaged", error="scrub: textures/texture.png missing")
    damaged = httpx.head(url, headers=viewer)
    assert damaged.status_code == 409
    assert "is damaged" in httpx.get(url, headers=viewer).json()["detail"]


def test_the_archive_copy_is_served_once_retention_removed_the_output(
    api: str, storage: StorageHook, metadata: MetadataHook, tmp_path: Path, unique_id: str
) -> None:
    """The route remembered the set in `output`; retention removes that output (its archive copy is
    complete): the same URLs now redirect into the archive."""
    old = "20260101T000000Z"
    files = run_files(unique_id)
    publish(storage, metadata, tmp_path / "run", unique_id, files, stamp=old)
    url = route(api, unique_id, PNG)
    before = httpx.get(url, headers=as_user("viewer"))
    assert urlsplit(before.headers["location"]).path.startswith(f"/output/{unique_id}/")
    archive_and_record(storage, metadata, unique_id)
    with metadata.transaction() as cur:  # finished 20 years ago; retention is asked for 19
        cur.execute("UPDATE e2e3d.jobs SET finished_at = now() - interval '20 years' WHERE job_id = %s", (unique_id,))
    assert unique_id in apply_retention(storage, metadata, 19 * 365)["jobs"]
    assert storage.list_keys("output", f"{unique_id}/") == []

    after = httpx.get(url, headers=as_user("viewer"))
    assert after.status_code == 307
    assert urlsplit(after.headers["location"]).path == f"/archive/{archive_prefix(unique_id, old)}{PNG}"
    followed = httpx.get(url, headers={**as_user("viewer"), "Range": "bytes=0-7"}, follow_redirects=True)
    assert followed.status_code == 206 and followed.content == files[PNG][:8]
    mtl = httpx.get(route(api, unique_id, MTL), headers=as_user("viewer"), follow_redirects=True)
    assert mtl.content == files[MTL]


def test_the_manifest_is_read_once_and_read_again_after_a_republish(
    api: str,
    storage: StorageHook,
    metadata: MetadataHook,
    tmp_path: Path,
    unique_id: str,
    published_job: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tileset's many hits cost one HEAD of the SUCCESS marker each, not the manifest; a republish
    (a new SUCCESS) is seen at once: new paths served, gone paths 404, new bytes."""
    viewer = as_user("viewer")
    sent: list[str] = []
    real_urlopen = urllib3.PoolManager.urlopen

    def counted(self: urllib3.PoolManager, method: str, url: str, *args: object, **kwargs: object):
        if f"/{unique_id}/" in url:
            sent.append(f"{method} {urlsplit(url).path.split(f'/{unique_id}/', 1)[1]}")
        return real_urlopen(self, method, url, *args, **kwargs)

    def manifest_reads() -> int:
        return sent.count("GET metadata.json")

    monkeypatch.setattr(urllib3.PoolManager, "urlopen", counted)
    for path in (TILESET, TILE, OBJ, MTL, PNG) * 4:
        assert httpx.get(route(api, unique_id, path), headers=viewer).status_code == 307
    assert manifest_reads() == 1, sent
    assert sent.count("HEAD SUCCESS") == 20  # each hit checks the set is still the one published
    monkeypatch.undo()

    files = run_files(f"{unique_id} again")
    del files[TILE]
    files["mesh/scene/1/0_0.glb"] = b"glTF new tile"
    run = tmp_path / "republished"
    write_files(run, files)
    publish_run(storage, run, unique_id, NEWER, "output")
    metadata.record_job(unique_id, NEWER, "ds1", "running")
    metadata.record_job(unique_id, NEWER, "ds1", "succeeded")

    monkeypatch.setattr(urllib3.PoolManager, "urlopen", counted)
    sent.clear()
    fresh = httpx.get(route(api, unique_id, "mesh/scene/1/0_0.glb"), headers=viewer, follow_redirects=True)
    assert fresh.status_code == 200 and fresh.content == b"glTF new tile"
    assert httpx.get(route(api, unique_id, TILE), headers=viewer).status_code == 404  # no longer published
    png = httpx.get(route(api, unique_id, PNG), headers=viewer, follow_redirects=True)
    assert png.content == files[PNG] != published_job[PNG]
    assert manifest_reads() == 1, sent


def test_openapi_documents_the_file_route(api: str) -> None:
    schema = httpx.get(f"{api}/openapi.json").json()
    item = schema["paths"]["/api/v1/jobs/{job_id}/files/{path}"]
    assert set(item) == {"get", "head"}
    for operation in item.values():
        assert {"307", "401", "403", "404", "409", "422"} <= set(operation["responses"])
        assert "Location" in operation["responses"]["307"]["headers"] and "security" in operation
        assert any(p["name"] == "expires" and p["schema"]["maximum"] == 3600 for p in operation["parameters"])
    assert item["get"]["operationId"] != item["head"]["operationId"]
    assert "route" in schema["components"]["schemas"]["ResultFile"]["required"]


def test_a_right_sized_jobs_objs_and_tileset_find_their_files_through_the_route(
    api: str, storage: StorageHook, metadata: MetadataHook, tmp_path: Path, unique_id: str
) -> None:
    """What right-sizing publishes: each LOD's OBJ names its MTL and the MTL its texture, the 3D Tiles
    tileset its tiles, all by relative paths that a pre-signed URL cannot follow (an unsigned request to a
    private bucket); from the route they all resolve. The GLBs carry their texture inside."""
    import pygltflib

    from bench.rightsize_data import make_results
    from e2e3d_provider.lifecycle.results.rightsize import right_size_run
    from e2e3d_provider.rightsize.policy import RightSizePolicy

    run = tmp_path / "run"
    make_results(run, "test")
    right_size_run(run, RightSizePolicy(mesh_error_samples=5_000))
    publish_run(storage, run, unique_id, STAMP, "output")
    metadata.record_job(unique_id, STAMP, "ds1", "running")
    metadata.record_job(unique_id, STAMP, "ds1", "succeeded")
    viewer = as_user("viewer")
    listing = httpx.get(f"{api}/api/v1/jobs/{unique_id}/results", headers=viewer).json()["files"]
    sha = {f["path"]: f["sha256"] for f in listing}

    def fetch(url: str) -> bytes:
        answer = httpx.get(url, headers=viewer, follow_redirects=True)
        assert answer.status_code == 200, (url, answer.status_code)
        path = url.split("/files/", 1)[1]
        assert hashlib.sha256(answer.content).hexdigest() == sha[path], url
        return answer.content

    objs = [urljoin(api, f["route"]) for f in listing if f["path"].endswith(".obj")]
    glbs = [urljoin(api, f["route"]) for f in listing if f["path"].endswith(".glb")]
    assert len(objs) >= 2 and len(glbs) >= 2
    followed = set()
    for obj_url in objs:
        mtl_url = urljoin(obj_url, re.search(rb"^mtllib (\S+)\s*$", fetch(obj_url), re.M).group(1).decode())
        texture = re.search(rb"^map_Kd .*?(\S+)\s*$", fetch(mtl_url), re.M).group(1).decode()
        followed.add(urljoin(mtl_url, texture))
    for glb_url in glbs:  # self-contained: the texture is inside, nothing to follow
        (image,) = pygltflib.GLTF2.load_from_bytes(fetch(glb_url)).images
        assert image.uri is None and image.bufferView is not None
    tileset = next(urljoin(api, f["route"]) for f in listing if f["path"].endswith("/tileset.json"))
    contents = [t["content"]["uri"] for _, t in walk_tiles(json.loads(fetch(tileset))) if "content" in t]
    assert len(contents) >= 2
    followed |= {urljoin(tileset, uri) for uri in contents}
    files = f"{api}/api/v1/jobs/{unique_id}/files/"
    for url in followed:
        assert url.startswith((f"{files}textures/", f"{files}mesh/tiles/")), url
        fetch(url)


def test_object_storage_answers_a_cross_origin_range_request_a_page_sends_after_the_redirect(
    api: str, unique_id: str, published_job: dict
) -> None:
    """A page on the api-server's origin fetches the route; the browser follows the redirect to object
    storage, another origin, sending ``Origin`` and ``Range`` (a CORS-safelisted header: no preflight) and
    no cookie; it hands the page the bytes only if the answer allows that origin."""
    log = published_job["logs/reconstruct.log"]
    location = httpx.get(route(api, unique_id, "logs/reconstruct.log"), headers=as_user("viewer")).headers["location"]
    answer = httpx.get(location, headers={"Origin": api, "Range": "bytes=10-19"})
    assert answer.status_code == 206 and answer.content == log[10:20]
    assert answer.headers.get("access-control-allow-origin") in ("*", api), dict(answer.headers)


def test_the_remembered_sets_are_bounded_least_recently_used_first(
    storage: StorageHook, metadata: MetadataHook, tmp_path: Path, unique_id: str
) -> None:
    from e2e3d_provider.api.published_files import PublishedFilesCache

    jobs = [f"{unique_id}-{n}" for n in range(3)]
    for job_id in jobs:
        publish(storage, metadata, tmp_path / job_id, job_id, {PNG: tiny_png(job_id)})
    cache = PublishedFilesCache(capacity=2)

    def lookup(n: int):
        return cache.lookup(storage, metadata.get_job(jobs[n]))

    first, second = lookup(0), lookup(1)
    assert lookup(0) is first  # remembered, and now the most recently used
    third = lookup(2)  # the least recently used, jobs[1], goes
    assert len(cache) == 2 and lookup(0) is first and lookup(2) is third
    again = lookup(1)
    assert again is not second and again.files.keys() == second.files.keys()  # read again
    assert len(cache) == 2 and lookup(0) is not first  # of jobs[0] and jobs[2], jobs[0] was used least recently


def test_routes_name_the_mount_point_the_api_server_gives_the_app(
    airflow_db, storage: StorageHook, metadata: MetadataHook, tmp_path: Path, unique_id: str
) -> None:
    """Airflow's api-server mounts the plugin's app under /e2e3d (as a sub-application, like this parent):
    the listing's routes carry that prefix, so a page or a client resolves them on the api-server."""
    from fastapi import FastAPI

    from e2e3d_provider.plugin import URL_PREFIX

    files = run_files(unique_id)
    publish(storage, metadata, tmp_path / "run", unique_id, files)
    parent = FastAPI()
    parent.mount(URL_PREFIX, create_app())
    url, server, thread = serve(parent)
    try:
        viewer = as_user("viewer")
        body = httpx.get(f"{url}{URL_PREFIX}/api/v1/jobs/{unique_id}/results", headers=viewer).json()
        obj = next(f for f in body["files"] if f["path"] == OBJ)
        assert obj["route"] == f"{URL_PREFIX}/api/v1/jobs/{unique_id}/files/{OBJ}"
        mtl_url = urljoin(urljoin(url, obj["route"]), "reconstructed_mesh.mtl")
        fetched = httpx.get(mtl_url, headers=viewer, follow_redirects=True)
        assert fetched.status_code == 200 and fetched.content == files[MTL]
    finally:
        server.should_exit = True
        thread.join(10)
