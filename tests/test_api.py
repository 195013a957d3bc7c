"""The results API over real HTTP (uvicorn on loopback), wired to the real stack, with Airflow's
auth manager issuing and checking the JWTs."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import httpx
import pytest
import urllib3

from e2e3d_provider.api.app import create_app
from e2e3d_provider.devstack.stack import free_ports
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.durability.archive import archive_job
from e2e3d_provider.lifecycle.results.publish import publish_run
from tests.helpers import as_user, edit_first_file, forge_manifest, serve, tiny_png, token, write_files

STAMP = "20261124T120000Z"


@pytest.fixture
def published_job(storage: StorageHook, metadata: MetadataHook, tmp_path: Path, unique_id: str) -> dict:
    files = {
        "mesh/reconstructed_mesh.obj": b"v 0 0 0\n",
        "mesh/reconstructed_mesh.mtl": b"newmtl t\n",
        "textures/texture.png": os.urandom(2048),
        "pointcloud/pointcloud.ply": b"ply\n",
        "logs/reconstruct.log": b"ok\n",
    }
    write_files(tmp_path, files)
    publish_run(storage, tmp_path, unique_id, STAMP, "output", {"faces": 1})
    metadata.record_job(unique_id, STAMP, "ds1", "running")
    metadata.record_job(unique_id, STAMP, "ds1", "succeeded", statistics={"faces": 1})
    return files


def test_results_give_working_presigned_urls_for_every_file(api: str, unique_id: str, published_job: dict) -> None:
    response = httpx.get(f"{api}/api/v1/jobs/{unique_id}/results", headers=as_user("viewer"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded" and body["stamp"] == STAMP and body["expires_in"] == 24 * 3600
    assert {f["path"] for f in body["files"]} == set(published_job)
    for item in body["files"]:
        fetched = httpx.get(item["url"])  # a plain HTTP client, no credentials
        assert fetched.status_code == 200 and fetched.content == published_job[item["path"]]
        assert hashlib.sha256(fetched.content).hexdigest() == item["sha256"]
    assert httpx.get(body["mesh"]).content == published_job["mesh/reconstructed_mesh.obj"]
    assert httpx.get(body["pointcloud"]).content == published_job["pointcloud/pointcloud.ply"]
    assert "X-Amz-Expires=86400" in body["texture"]


def test_expiry_is_configurable_capped_and_expired_urls_are_refused(
    api: str, unique_id: str, published_job: dict
) -> None:
    headers = as_user("viewer")
    results = f"{api}/api/v1/jobs/{unique_id}/results"
    assert httpx.get(results, params={"expires": 8 * 24 * 3600}, headers=headers).status_code == 422
    assert httpx.get(results, params={"expires": 0}, headers=headers).status_code == 422
    body = httpx.get(f"{api}/api/v1/jobs/{unique_id}/results", params={"expires": 1}, headers=headers).json()
    assert body["expires_in"] == 1
    time.sleep(2.5)
    assert httpx.get(body["mesh"]).status_code == 403


def test_unknown_incomplete_and_malformed_jobs(api: str, metadata: MetadataHook, unique_id: str) -> None:
    headers = as_user("viewer")
    assert httpx.get(f"{api}/api/v1/jobs/{unique_id}-never/results", headers=headers).status_code == 404
    metadata.record_job(unique_id, STAMP, "ds1", "running")  # known, but no SUCCESS yet
    conflict = httpx.get(f"{api}/api/v1/jobs/{unique_id}/results", headers=headers)
    assert conflict.status_code == 409 and "no SUCCESS" in conflict.json()["detail"]
    for bad in ("..%2F..%2Fetc", "a..b", "-x", "x" * 129, "bad%20id"):
        assert httpx.get(f"{api}/api/v1/jobs/{bad}/results", headers=headers).status_code in (404, 422), bad
    assert httpx.get(f"{api}/api/v1/jobs/a..b/results", headers=headers).status_code == 422


def test_archived_jobs_are_served_from_the_archive_after_retention(
    api: str, storage: StorageHook, metadata: MetadataHook, unique_id: str, published_job: dict
) -> None:
    result = archive_job(storage, unique_id, remove_source=True)
    metadata.record_job(unique_id, STAMP, "ds1", "archived", archive_key=f"archive/{result.archive_key}")
    body = httpx.get(f"{api}/api/v1/jobs/{unique_id}/results", headers=as_user("viewer")).json()
    assert body["bucket"] == "archive" and body["prefix"] == result.archive_key
    assert httpx.get(body["texture"]).content == published_job["textures/texture.png"]


def upload(name: str, data: bytes) -> dict:
    return {"name": name, "bytes": len(data)}


def grant_for(api: str, dataset: str, files: list, expires: int = 600) -> httpx.Response:
    return httpx.post(
        f"{api}/api/v1/datasets/{dataset}/uploads", json={"files": files, "expires": expires}, headers=as_user("runner")
    )


def test_upload_urls_let_clients_put_inputs_straight_to_storage(api: str, storage: StorageHook, unique_id: str) -> None:
    data = {"views/a.jpg": b"image bytes of a", "b.PNG": b"image bytes of b, longer"}
    grant = grant_for(api, unique_id, [upload(name, body) for name, body in data.items()])
    assert grant.status_code == 200, grant.text
    body = grant.json()
    assert [u["key"] for u in body["uploads"]] == [f"{unique_id}/views/a.jpg", f"{unique_id}/b.PNG"]
    for item in body["uploads"]:
        condition = storage.create_only_condition("input")  # what this server honours (test_storage_hook)
        assert item["headers"] == {**condition, "Content-Length": str(len(data[item["file"]]))}
        assert httpx.put(item["url"], content=data[item["file"]], headers=item["headers"]).status_code == 200
    assert storage.get_bytes("input", f"{unique_id}/views/a.jpg") == data["views/a.jpg"]


def test_uploads_of_stored_content_are_skipped_and_a_commit_makes_a_content_addressed_dataset(
    api: str, storage: StorageHook, unique_id: str
) -> None:
    import hashlib

    from e2e3d_provider.core.layout import blob_key
    from e2e3d_provider.lifecycle.inputs.datasets import read_dataset

    known, fresh = tiny_png(f"known image {unique_id}"), tiny_png(f"fresh image {unique_id}")
    storage.put_bytes("input", blob_key(hashlib.sha256(known).hexdigest()), known)  # another dataset holds it
    files = [
        {**upload(name, data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in {"a.jpg": known, "b.jpg": fresh, "c.jpg": known}.items()
    ]
    grant = grant_for(api, unique_id, files).json()
    assert [s["file"] for s in grant["stored"]] == ["a.jpg", "c.jpg"]  # nothing to send for those
    assert [u["file"] for u in grant["uploads"]] == ["b.jpg"]
    item = grant["uploads"][0]
    assert httpx.put(item["url"], content=fresh, headers=item["headers"]).status_code == 200
    commit = httpx.post(
        f"{api}/api/v1/datasets/{unique_id}/commit", json={"reuse": grant["stored"]}, headers=as_user("runner")
    )
    assert commit.status_code == 200, commit.text
    assert commit.json() == {
        "dataset": unique_id,
        "images": 3,
        "adopted": 3,
        "new_blobs": 1,
        "deduplicated": 0,
        "rejected": [],
    }
    assert storage.list_keys("input", unique_id) == [f"{unique_id}/dataset.json"]
    manifest = read_dataset(storage, unique_id)
    assert {i.path: i.sha256 for i in manifest.images} == {f["name"]: f["sha256"] for f in files}
    assert storage.get_bytes("input", blob_key(hashlib.sha256(fresh).hexdigest())) == fresh
    # a name the dataset holds is refused, content it does not hold cannot be claimed
    assert grant_for(api, unique_id, [upload("a.jpg", b"x")]).status_code == 409
    lie = {"file": "d.jpg", "bytes": 5, "sha256": "0" * 64}
    refused = httpx.post(f"{api}/api/v1/datasets/{unique_id}/commit", json={"reuse": [lie]}, headers=as_user("runner"))
    assert refused.status_code == 422 and "no stored image has sha256" in refused.text
    assert len(read_dataset(storage, unique_id).images) == 3


def test_a_grant_for_a_stored_name_is_refused_and_the_image_kept(
    api: str, storage: StorageHook, unique_id: str
) -> None:
    storage.put_bytes("input", f"{unique_id}/view_01.jpg", b"the original image")
    refused = grant_for(api, unique_id, [upload("view_01.jpg", b"<html>" * 1000), upload("new.jpg", b"n")])
    assert refused.status_code == 409, refused.text
    assert "view_01.jpg" in refused.text and "new.jpg" not in refused.text
    assert storage.get_bytes("input", f"{unique_id}/view_01.jpg") == b"the original image"


def test_an_upload_url_creates_its_object_once_and_never_replaces_one(
    api: str, storage: StorageHook, unique_id: str
) -> None:
    first, late = b"first upload", b"a file stored after the grant"
    grant = grant_for(api, unique_id, [upload("a.jpg", first), upload("b.jpg", first)]).json()
    url_a, url_b = grant["uploads"][0], grant["uploads"][1]
    assert httpx.put(url_a["url"], content=first, headers=url_a["headers"]).status_code == 200
    # the same URL used again (same size, other bytes) is refused by the server: it would replace an object
    again = httpx.put(url_a["url"], content=b"second uploa", headers=url_a["headers"])
    assert again.status_code == 412, again.text
    assert storage.get_bytes("input", f"{unique_id}/a.jpg") == first
    # a name that got stored after the grant was handed out is not replaced either
    storage.put_bytes("input", f"{unique_id}/b.jpg", late)
    assert httpx.put(url_b["url"], content=first, headers=url_b["headers"]).status_code == 412
    assert storage.get_bytes("input", f"{unique_id}/b.jpg") == late


def test_an_upload_url_refuses_another_size_or_a_missing_header(api: str, storage: StorageHook, unique_id: str) -> None:
    item = grant_for(api, unique_id, [upload("a.jpg", b"12345")]).json()["uploads"][0]
    big = b"1234567890" * 5_000_000  # the client sends its own (true) Content-Length: not the signed one
    condition = {k: v for k, v in item["headers"].items() if k != "Content-Length"}
    assert httpx.put(item["url"], content=big, headers=condition).status_code == 403
    # no condition header: refused as a signed header missing (SeaweedFS 403; MinIO 400 AccessDenied)
    assert httpx.put(item["url"], content=b"12345").status_code in (400, 403)
    assert not storage.exists("input", f"{unique_id}/a.jpg")
    assert httpx.put(item["url"], content=b"12345", headers=item["headers"]).status_code == 200


def test_grants_bound_the_size_and_want_it_declared(api: str, unique_id: str) -> None:
    too_big = grant_for(api, unique_id, [{"name": "a.jpg", "bytes": 512 * 1024 * 1024 + 1}])
    assert too_big.status_code == 422 and "at most" in too_big.text
    no_size = grant_for(api, unique_id, ["a.jpg"])
    assert no_size.status_code == 422 and '"bytes"' in no_size.text.replace("\\", "")
    assert grant_for(api, unique_id, [{"name": "a.jpg", "bytes": 0}]).status_code == 422


@pytest.mark.parametrize(
    "files", [["../escape.jpg"], ["/abs.jpg"], ["notes.txt"], ["a.jpg", "a.jpg"], [], ["x\u0000.jpg"]]
)
def test_bad_upload_names_are_refused(api: str, files: list[str], unique_id: str) -> None:
    response = grant_for(api, unique_id, [{"name": name, "bytes": 10} for name in files])
    assert response.status_code == 422


def test_bad_ids_get_422_without_touching_storage(airflow_db, connections) -> None:
    """An app whose connections do not even exist: any storage access would fail with 5xx."""
    os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = "admin:admin,viewer:viewer,runner:user"
    url, server, thread = serve(create_app("no_such_minio_conn", "no_such_metadata_conn"))
    try:
        assert httpx.get(f"{url}/api/v1/jobs/a..b/results", headers=as_user("viewer")).status_code == 422
        assert (
            httpx.post(
                f"{url}/api/v1/datasets/-bad/uploads", json={"files": ["a.jpg"]}, headers=as_user("runner")
            ).status_code
            == 422
        )
        assert (
            httpx.post(
                f"{url}/api/v1/datasets/ok/uploads",
                json={"files": [{"name": "../a.jpg", "bytes": 1}]},
                headers=as_user("runner"),
            ).status_code
            == 422
        )
    finally:
        server.should_exit = True
        thread.join(10)


def test_authentication_and_permissions(api: str, unique_id: str) -> None:
    results = f"{api}/api/v1/jobs/{unique_id}/results"
    assert httpx.get(results).status_code == 401
    assert httpx.get(results, headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403
    assert httpx.get(f"{api}/api/v1/storage/stats").status_code == 401
    assert httpx.post(f"{api}/api/v1/datasets/{unique_id}/uploads", json={"files": ["a.jpg"]}).status_code == 401
    # a viewer may read but not hand out upload URLs (that needs the right to trigger runs)
    uploads = f"{api}/api/v1/datasets/{unique_id}/uploads"
    denied = httpx.post(uploads, json={"files": ["a.jpg"]}, headers=as_user("viewer"))
    assert denied.status_code == 403
    assert (
        httpx.get(
            f"{api}/api/v1/jobs/{unique_id}/results", headers={"Authorization": f"Bearer {token('x', None)}"}
        ).status_code
        == 403
    )  # authenticated, but with no role
    assert httpx.get(f"{api}/api/v1/health").status_code == 200  # the only anonymous route


def test_storage_stats_answer_from_the_kept_figures_and_never_list_a_bucket(
    api: str, storage: StorageHook, metadata: MetadataHook, monkeypatch: pytest.MonkeyPatch, unique_id: str
) -> None:
    """Before anything is counted the route says so (it used to list every bucket per request, 8.9 s at
    10,000 jobs); once a writer stored what it changed it gives the figures, fresh to the second, and says
    no reconciliation has checked them yet. Either way it sends no S3 request."""
    from e2e3d_provider.hooks.metadata import SCHEMA

    metadata.record_transfer("upload", "output", files=2, bytes=2_000_000, seconds=1.0)
    metadata.record_transfer("download", "input", ok=False, error="boom")
    with metadata.transaction() as cur:
        cur.execute(f"SELECT * FROM {SCHEMA}.usage")
        saved = cur.fetchall()
        cur.execute(f"DELETE FROM {SCHEMA}.usage")
        cur.execute(f"DELETE FROM {SCHEMA}.bucket_usage")
    s3_requests: list[str] = []
    real_urlopen = urllib3.PoolManager.urlopen

    def counted(self: urllib3.PoolManager, method: str, url: str, *args: object, **kwargs: object):
        s3_requests.append(f"{method} {url}")
        return real_urlopen(self, method, url, *args, **kwargs)

    monkeypatch.setattr(urllib3.PoolManager, "urlopen", counted)
    empty = httpx.get(f"{api}/api/v1/storage/stats", headers=as_user("viewer")).json()
    assert empty["buckets"] == [] and "no storage figures yet" in empty["snapshot"]
    assert s3_requests == []
    monkeypatch.undo()

    with metadata.transaction() as cur:  # what the other tests' writers stored, back
        cur.executemany(f"INSERT INTO {SCHEMA}.usage VALUES ({', '.join(['%s'] * 8)})", saved)
    writer = StorageHook()  # a hook of its own: nothing another test wrote is counted with it
    writer.put_bytes("output", f"{unique_id}/a.bin", b"12345")
    metadata.record_usage(writer.recount_touched())
    monkeypatch.setattr(urllib3.PoolManager, "urlopen", counted)
    body = httpx.get(f"{api}/api/v1/storage/stats", headers=as_user("viewer")).json()
    assert s3_requests == []
    output = next(b for b in body["buckets"] if b["bucket"] == "output")
    assert output["objects"] >= 1 and output["units"] >= 1 and 0 <= output["age_seconds"] < 60
    assert body["snapshot"] is None
    assert body["transfers_24h"]["upload"]["bytes"] >= 2_000_000 and body["transfers_24h"]["download"]["errors"] >= 1
    assert isinstance(body["jobs"], dict)


def test_health_reports_each_dependency(api: str, airflow_db, connections) -> None:
    body = httpx.get(f"{api}/api/v1/health").json()
    assert body["status"] == "ok" and body["storage"]["ok"] and body["metadata"]["ok"]
    url, server, thread = serve(create_app("no_such_minio_conn", "e2e3d_metadata"))
    try:
        degraded = httpx.get(f"{url}/api/v1/health")
        assert degraded.status_code == 503 and degraded.json()["storage"]["ok"] is False
    finally:
        server.should_exit = True
        thread.join(10)


def test_openapi_schema_is_served_and_describes_every_route(api: str) -> None:
    schema = httpx.get(f"{api}/openapi.json").json()
    assert schema["info"]["title"] == "E2E3D results API"
    assert set(schema["paths"]) == {
        "/api/v1/jobs/{job_id}/results",
        "/api/v1/jobs/{job_id}/files/{path}",
        "/api/v1/jobs/{job_id}/scene",
        "/api/v1/jobs",
        "/api/v1/jobs/{job_id}",
        "/api/v1/datasets",
        "/api/v1/datasets/{dataset}/uploads",
        "/api/v1/datasets/{dataset}/commit",
        "/api/v1/storage/stats",
        "/api/v1/storage/dashboard",
        "/api/v1/health",
    }
    results = schema["paths"]["/api/v1/jobs/{job_id}/results"]["get"]
    assert {"200", "404", "409", "422"} <= set(results["responses"])
    assert any(p["name"] == "expires" and p["schema"]["maximum"] == 7 * 24 * 3600 for p in results["parameters"])
    assert "security" in results and "security" not in schema["paths"]["/api/v1/health"]["get"]
    assert "JobResults" in schema["components"]["schemas"]
    json.dumps(schema)


def test_the_plugins_connection_ids_are_read_from_airflow_config_when_first_needed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The plugin builds its app at import; the connection ids it serves must still follow the config."""
    app = create_app()  # as the plugin does, before any configuration below
    monkeypatch.setenv("AIRFLOW__E2E3D__MINIO_CONN_ID", "minio_results")
    monkeypatch.setenv("AIRFLOW__E2E3D__METADATA_CONN_ID", "metadata_results")
    backends = app.state.backends
    assert (backends.storage.minio_conn_id, backends.metadata.metadata_conn_id) == ("minio_results", "metadata_results")
    assert create_app("explicit", "given").state.backends.minio_conn_id == "explicit"  # arguments win


def test_storage_stats_report_every_stored_version(
    api: str, storage: StorageHook, metadata: MetadataHook, unique_id: str
) -> None:
    before = next(b for b in metadata.bucket_usage() if b["bucket"] == "output") if metadata.bucket_usage() else None
    writer = StorageHook()  # a hook of its own: nothing another test wrote is counted with it
    writer.put_bytes("output", f"{unique_id}/a.bin", b"1" * 100)
    writer.put_bytes("output", f"{unique_id}/a.bin", b"2" * 300)  # the first becomes noncurrent
    metadata.record_usage(writer.recount_touched())
    body = httpx.get(f"{api}/api/v1/storage/stats", headers=as_user("viewer")).json()
    output = next(b for b in body["buckets"] if b["bucket"] == "output")
    base = before or {"objects": 0, "bytes": 0, "versions": 0, "stored_bytes": 0}
    assert (output["objects"] - base["objects"], output["bytes"] - base["bytes"]) == (1, 300)
    assert (output["versions"] - base["versions"], output["stored_bytes"] - base["stored_bytes"]) == (2, 400)
    assert output["noncurrent_bytes"] == output["stored_bytes"] - output["bytes"]


@pytest.mark.parametrize(
    "name",
    [
        "a" * 761 + ".jpg",  # 765 characters: fits a relative path, not below the dataset's prefix
        "b" * 764 + ".jpg",  # 768
        "é" * 400 + ".jpg",  # 404 characters but 804 UTF-8 bytes: S3 counts bytes
    ],
)
def test_upload_names_are_measured_as_the_whole_key_in_utf8_bytes(api: str, name: str, unique_id: str) -> None:
    response = grant_for(api, unique_id, [{"name": name, "bytes": 1}])
    assert response.status_code == 422, response.text
    assert "longer than 768 bytes (UTF-8)" in response.text  # the key check's own message, not a schema error


def test_anonymous_health_says_only_up_or_down_and_errors_name_no_host_or_port(
    api: str, airflow_db, connections, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = httpx.get(f"{api}/api/v1/health").json()
    assert body == {"status": "ok", "storage": {"ok": True}, "metadata": {"ok": True}}
    (port,) = free_ports(1)  # nothing listens there
    monkeypatch.setenv(
        "AIRFLOW_CONN_E2E3D_PG_DOWN",
        json.dumps(
            {"conn_type": "postgres", "host": "127.0.0.1", "port": port, "login": "u", "password": "p", "schema": "d"}
        ),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_MINIO_DOWN",
        json.dumps(
            {"conn_type": "aws", "login": "k", "password": "s", "extra": {"endpoint_url": f"http://127.0.0.1:{port}"}}
        ),
    )
    for app, conn_id in (
        (create_app("minio_default", "e2e3d_pg_down"), "e2e3d_pg_down"),
        (create_app("minio_down", "e2e3d_metadata"), "minio_down"),
    ):
        url, server, thread = serve(app)
        try:
            degraded = httpx.get(f"{url}/api/v1/health")
            assert degraded.status_code == 503 and str(port) not in degraded.text, degraded.text
            path = "/api/v1/jobs/some-job/results" if "pg" in conn_id else "/api/v1/storage/stats"
            failed = httpx.get(f"{url}{path}", headers=as_user("viewer"))
            if "pg" not in conn_id:  # stats read PostgreSQL first; make storage the one asked
                failed = httpx.post(
                    f"{url}/api/v1/datasets/ds/uploads",
                    json={"files": [{"name": "a.jpg", "bytes": 1}]},
                    headers=as_user("runner"),
                )
            assert failed.status_code in (502, 503), failed.text
            assert conn_id in failed.text and "127.0.0.1" not in failed.text and str(port) not in failed.text
        finally:
            server.should_exit = True
            thread.join(10)


def test_results_whose_bytes_were_replaced_behind_their_label_are_not_served(
    api: str, storage: StorageHook, unique_id: str, published_job: dict
) -> None:
    import io

    key = f"{unique_id}/textures/texture.png"
    old = storage.stat("output", key)
    data = bytearray(published_job["textures/texture.png"])
    data[0] ^= 0xFF  # same size, other bytes, the old x-amz-meta-sha256 label kept
    storage.client.put_object("output", key, io.BytesIO(bytes(data)), len(data), metadata={"sha256": old.sha256})
    response = httpx.get(f"{api}/api/v1/jobs/{unique_id}/results", headers=as_user("viewer"))
    assert response.status_code == 409 and "no longer match their manifest" in response.text, response.text


def test_a_commit_adopts_images_only_whatever_a_file_is_named(api: str, storage: StorageHook, unique_id: str) -> None:
    """An upload commit once adopted a shell script named .jpg into the dataset (ingest refuses it): the
    commit reads every uploaded object and adopts only what Pillow reads as an image."""
    import io

    from PIL import Image

    from e2e3d_provider.lifecycle.inputs.datasets import read_dataset

    png = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(png, format="PNG")
    files = {"real.png": png.getvalue(), "fake.jpg": b"#!/bin/sh\nrm -rf / --no-preserve-root\n"}
    grant = grant_for(api, unique_id, [upload(name, body) for name, body in files.items()]).json()
    for item in grant["uploads"]:
        assert httpx.put(item["url"], content=files[item["file"]], headers=item["headers"]).status_code == 200
    commit = httpx.post(f"{api}/api/v1/datasets/{unique_id}/commit", json={"reuse": []}, headers=as_user("runner"))
    assert commit.status_code == 200, commit.text
    body = commit.json()
    assert body["images"] == 1 and body["adopted"] == 1
    assert len(body["rejected"]) == 1 and body["rejected"][0].startswith("fake.jpg: not a readable image")
    assert [i.path for i in read_dataset(storage, unique_id).images] == ["real.png"]
    assert storage.get_bytes("input", f"{unique_id}/fake.jpg") == files["fake.jpg"]  # refused, not lost


def test_a_request_body_is_bounded_and_a_422_does_not_echo_it(api: str, unique_id: str) -> None:
    """No request-size limit, and a 422 echoed the whole body: 50 MB in, 50 MB out."""
    big = {"files": [{"name": "a" * 1000 + ".jpg", "bytes": 1}] * 3000, "expires": 600}  # about 3 MB of JSON
    refused = httpx.post(f"{api}/api/v1/datasets/{unique_id}/uploads", json=big, headers=as_user("runner"))
    assert refused.status_code == 413 and len(refused.content) < 1000, refused.text[:300]
    chunked = httpx.post(
        f"{api}/api/v1/datasets/{unique_id}/uploads",
        content=iter([b'{"files": [' + b'"x",' * 600_000 + b'"x"]}']),  # no Content-Length: counted as read
        headers={**as_user("runner"), "Content-Type": "application/json"},
    )
    assert chunked.status_code == 413, chunked.text[:300]
    wrong = {"files": [{"name": "a.jpg", "bytes": "x" * 100_000}], "expires": 600}
    invalid = httpx.post(f"{api}/api/v1/datasets/{unique_id}/uploads", json=wrong, headers=as_user("runner"))
    assert invalid.status_code == 422 and len(invalid.content) < 5_000, len(invalid.content)
    assert "x" * 1000 not in invalid.text


BAD_MANIFESTS = {
    "odd figures": (edit_first_file({"figures": [["faces", 1, 2]]}), "figures must be a JSON object"),
    "figures NaN": (edit_first_file({"figures": {"faces": "@NaN"}}), "NaN is not a JSON number"),
    "level 1e400": (edit_first_file({"role": "lod", "level": "@1e400"}), "1e400 is out of range"),
    "bad tile row": (
        edit_first_file({"role": "tile", "level": 0, "figures": {"index": True, "row": "x", "col": 0}}),
        "tile row must be a whole number",
    ),
    "a ../ path": (edit_first_file({"path": "../other/mesh.obj"}), "'..' segments"),
}


@pytest.mark.parametrize("case", BAD_MANIFESTS, ids=BAD_MANIFESTS.keys())
def test_a_malformed_manifest_gets_a_409_saying_what_is_wrong_not_a_500(
    api: str, storage: StorageHook, unique_id: str, published_job: dict, case: str
) -> None:
    """Issue 28 (8): a manifest a worker wrote with odd values made the results route answer 500."""
    edit, problem = BAD_MANIFESTS[case]
    forge_manifest(storage, unique_id, edit)
    answer = httpx.get(f"{api}/api/v1/jobs/{unique_id}/results", headers=as_user("viewer"))
    assert answer.status_code == 409, answer.text
    detail = answer.json()["detail"]
    assert unique_id in detail and "output" in detail and problem in detail, detail


def test_another_jobs_manifest_copied_in_gets_a_409_not_a_502(
    api: str, storage: StorageHook, metadata: MetadataHook, tmp_path: Path, unique_id: str, published_job: dict
) -> None:
    """Issue 28 (8): another job's manifest and SUCCESS copied into a job's prefix (a consistent pair) made the
    results route answer 502 "ChecksumMismatchError", as if object storage had failed."""
    other = f"{unique_id}-other"
    write_files(tmp_path / "other", {"mesh/reconstructed_mesh.obj": b"v 1 1 1\n"})
    publish_run(storage, tmp_path / "other", other, STAMP, "output")
    worker = StorageHook("minio_worker")
    for name in ("metadata.json", "SUCCESS"):
        worker.put_bytes("output", f"{unique_id}/{name}", storage.get_bytes("output", f"{other}/{name}"))
    answer = httpx.get(f"{api}/api/v1/jobs/{unique_id}/results", headers=as_user("viewer"))
    assert answer.status_code == 409, answer.text
    assert f"belongs to job {other}" in answer.json()["detail"]
    # and a SUCCESS that names no manifest, or another one than is stored: 409 too, never 502
    worker.put_bytes("output", f"{unique_id}/SUCCESS", json.dumps({"job_id": unique_id}).encode())
    answer = httpx.get(f"{api}/api/v1/jobs/{unique_id}/results", headers=as_user("viewer"))
    assert answer.status_code == 409 and "names no manifest" in answer.json()["detail"], answer.text
