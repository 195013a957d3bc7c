"""The results API's listings and v1 contract over real HTTP on the real stack: ``GET /api/v1/jobs`` and
``GET /api/v1/datasets`` page by keyset (no duplicate, no gap, ``next_cursor`` null at the end), a cursor not
handed out is a 422 ``invalid_cursor``, the old paths answer 308 (a GET and a POST, repeated as a POST), and
each error a client can provoke is an ErrorBody with its code."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable

import httpx
import pytest

from e2e3d_provider.api.app import create_app
from e2e3d_provider.core.layout import BUCKET_INPUT
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from tests.helpers import as_user, serve, token

STAMP = "20261205T100000Z"


def walk(fetch: Callable[[dict], httpx.Response], key: str, **params: object) -> tuple[list[dict], list[int]]:
    """Every item a listing gives, page after page by next_cursor; the items and each page's size."""
    items: list[dict] = []
    sizes: list[int] = []
    cursor = None
    for _ in range(100):
        answer = fetch({**params, **({"cursor": cursor} if cursor else {})})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        items += body[key]
        sizes.append(len(body[key]))
        cursor = body["next_cursor"]
        if cursor is None:
            return items, sizes
    raise AssertionError("the listing never ended")


def error(answer: httpx.Response, status: int, code: str) -> str:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert (body["status"], body["code"]) == (status, code), body
    return str(body["detail"])


def test_120_jobs_page_by_50_without_duplicates_or_gaps(api: str, metadata: MetadataHook, unique_id: str) -> None:
    viewer, dataset = as_user("viewer"), f"ds-{unique_id}"
    ids = [f"{unique_id}-{n:03d}" for n in range(120)]
    for job in ids:
        metadata.record_job(job, STAMP, dataset, "running")
    for job in ids[::3]:  # 40 of them move on, so the order is not the order of creation
        metadata.record_job(job, STAMP, dataset, "failed", error="x")

    def fetch(params: dict) -> httpx.Response:
        return httpx.get(f"{api}/api/v1/jobs", params=params, headers=viewer)

    listed, sizes = walk(fetch, "jobs", dataset=dataset, limit=50)
    assert sizes == [50, 50, 20]
    assert sorted(j["job_id"] for j in listed) == sorted(ids)  # each once: no duplicate, no gap
    keys = [(j["updated_at"], j["job_id"], j["stamp"]) for j in listed]
    assert keys == sorted(keys, reverse=True)  # most recently updated first, across pages
    assert {j["job_id"] for j in listed[:40]} == set(ids[::3])  # updated last, listed first

    failed, sizes = walk(fetch, "jobs", dataset=dataset, status="failed", limit=15)
    assert sizes == [15, 15, 10] and {j["job_id"] for j in failed} == set(ids[::3])
    _, sizes = walk(fetch, "jobs", dataset=dataset, status="failed", limit=20)
    assert sizes == [20, 20, 0]  # a last page that was full: the next one is empty, its next_cursor null
    everything, _ = walk(fetch, "jobs", dataset=dataset, limit=1000)
    assert [j["job_id"] for j in everything] == [j["job_id"] for j in listed]


def test_a_cursor_not_handed_out_is_refused(api: str) -> None:
    viewer = as_user("viewer")
    wrong_shape = base64.urlsafe_b64encode(json.dumps(["2026-12-05T10:00:00+00:00", "a"]).encode()).decode()
    naive = base64.urlsafe_b64encode(json.dumps(["2026-12-05T10:00:00", "a", "b"]).encode()).decode().rstrip("=")
    for path in ("/api/v1/jobs", "/api/v1/datasets"):
        for cursor in ("not a cursor!", "bm90IGpzb24", wrong_shape, naive, "W10"):
            answer = httpx.get(f"{api}{path}", params={"cursor": cursor}, headers=viewer)
            assert "cursor" in error(answer, 422, "invalid_cursor"), (path, cursor)
    error(httpx.get(f"{api}/api/v1/jobs", params={"status": "done"}, headers=viewer), 422, "invalid_filter")
    error(httpx.get(f"{api}/api/v1/datasets", params={"prefix": "../x"}, headers=viewer), 422, "invalid_filter")
    error(httpx.get(f"{api}/api/v1/jobs", params={"limit": 0}, headers=viewer), 422, "validation_failed")


def test_datasets_page_as_one_listing_would_give_them(api: str, storage: StorageHook, unique_id: str) -> None:
    """Datasets whose ids prefix one another: object storage lists them in an order of its own (by key on
    MinIO, where ``p-a-x/`` comes before ``p-a/`` and ``p/`` last; by name on SeaweedFS). Pages of any size
    give that order with nothing repeated or skipped (a page ending at ``p-a`` must not name it again, nor
    miss ``p-a0`` or ``p-a-x``)."""
    viewer, p = as_user("viewer"), unique_id
    names = [p, f"{p}-a-x", f"{p}-a", f"{p}-a0", f"{p}-ab"]
    for name in names:
        storage.put_bytes(BUCKET_INPUT, f"{name}/img_0001.png", b"not read", "image/png")
        storage.put_bytes(BUCKET_INPUT, f"{name}/views/img_0002.png", b"not read", "image/png")
    storage.put_bytes(BUCKET_INPUT, f"{p}-loose.png", b"not a dataset", "image/png")

    def fetch(params: dict) -> httpx.Response:
        return httpx.get(f"{api}/api/v1/datasets", params=params, headers=viewer)

    whole, sizes = walk(fetch, "datasets", prefix=p, limit=1000)
    order = [d["dataset"] for d in whole]
    assert sorted(order) == sorted(names) and sizes == [5], order
    for limit, expected in ((1, [1, 1, 1, 1, 1]), (2, [2, 2, 1]), (5, [5])):
        listed, sizes = walk(fetch, "datasets", prefix=p, limit=limit)
        assert ([d["dataset"] for d in listed], sizes) == (order, expected), limit
    assert [d["dataset"] for d in walk(fetch, "datasets", prefix=f"{p}-a", limit=1)[0]] == [
        n for n in order if n.startswith(f"{p}-a")
    ]
    assert walk(fetch, "datasets", prefix=f"{p}-zz", limit=5) == ([], [0])
    page = fetch({"limit": 1000}).json()["datasets"]  # the whole bucket: the CAS area is not a dataset
    assert not [d for d in page if d["dataset"].startswith(".")]


def test_old_paths_redirect_with_308_and_a_post_is_repeated_as_a_post(api: str, unique_id: str) -> None:
    viewer = as_user("viewer")
    old = httpx.get(f"{api}/api/jobs", params={"limit": 1}, headers=viewer)
    assert (old.status_code, old.headers["location"]) == (308, "/api/v1/jobs?limit=1")
    followed = httpx.get(f"{api}/api/jobs", params={"limit": 1}, headers=viewer, follow_redirects=True)
    assert followed.status_code == 200 and set(followed.json()) == {"jobs", "next_cursor"}

    grant = httpx.post(
        f"{api}/api/datasets/{unique_id}/uploads",
        json={"files": [{"name": "a.jpg", "bytes": 5}]},
        headers=as_user("runner"),
        follow_redirects=True,
    )
    assert [r.status_code for r in grant.history] == [308]
    assert grant.status_code == 200, grant.text  # the POST and its body reached the v1 route
    assert [u["key"] for u in grant.json()["uploads"]] == [f"{unique_id}/a.jpg"]


def test_each_error_a_client_can_provoke_is_an_error_body_with_its_code(api: str, unique_id: str) -> None:
    viewer = as_user("viewer")
    results = f"{api}/api/v1/jobs/{unique_id}/results"
    error(httpx.get(results), 401, "unauthenticated")
    error(httpx.get(results, headers={"Authorization": "Bearer not-a-jwt"}), 403, "invalid_token")
    error(httpx.get(results, headers={"Authorization": f"Bearer {token('x', None)}"}), 403, "forbidden")
    denied = httpx.post(f"{api}/api/v1/datasets/{unique_id}/uploads", json={"files": []}, headers=viewer)
    error(denied, 403, "forbidden")
    error(httpx.get(results, headers=viewer), 404, "job_not_found")
    error(httpx.get(f"{api}/api/v1/jobs/{unique_id}", headers=viewer), 404, "job_not_found")
    error(httpx.get(f"{api}/api/v1/jobs/a..b/scene", headers=viewer), 422, "invalid_id")
    error(httpx.get(f"{api}/api/v1/jobs/{unique_id}/files/mesh/%2E%2E/x", headers=viewer), 422, "invalid_path")
    bad_body = httpx.post(f"{api}/api/v1/datasets/ds/uploads", json={"files": "x"}, headers=as_user("runner"))
    assert error(bad_body, 422, "validation_failed") and bad_body.json()["errors"] >= 1
    error(httpx.get(f"{api}/api/v1/nothing-here", headers=viewer), 404, "not_found")


@pytest.mark.parametrize("down", ["metadata", "storage"])
def test_an_outage_is_a_503_error_body_naming_the_connection(
    airflow_db, connections, down: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from e2e3d_provider.devstack.stack import free_ports

    os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = "admin:admin,viewer:viewer,runner:user"
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
    app = create_app("minio_default", "e2e3d_pg_down") if down == "metadata" else create_app("minio_down")
    url, server, thread = serve(app)
    try:
        if down == "metadata":
            answer = httpx.get(f"{url}/api/v1/jobs", headers=as_user("viewer"))
            assert "e2e3d_pg_down" in error(answer, 503, "metadata_unavailable")
        else:
            answer = httpx.get(f"{url}/api/v1/datasets", headers=as_user("viewer"))
            assert "minio_down" in error(answer, 503, "storage_unavailable")
        assert str(port) not in answer.text
    finally:
        server.should_exit = True
        thread.join(10)
