"""The results API's contract, read from its OpenAPI and checked in process (fast tier: no server, no stack).

Every path is versioned (``/api/v1/``); operation ids are unique and readable; every 4xx/5xx of every
operation is an ``ErrorBody`` (health's 503 excepted: a probe reads one Health shape whatever the answer);
every authenticated operation declares 401 and 403. The errors the app answers without a backend (no token,
an unknown path, a body over the bound, an unexpected exception) have that shape; the unversioned paths of
before answer 308 to theirs. The undocumented-status guard that ``tests.helpers.serve`` installs fires.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.routing import Mount

from e2e3d_provider.api.app import create_app
from e2e3d_provider.api.errors import CODES
from e2e3d_provider.api.limits import MAX_REQUEST_BYTES
from tests.helpers import serve, take_undocumented

ERROR_REF = "#/components/schemas/ErrorBody"
#: operations whose error answers are not an ErrorBody, each with why
NOT_ERROR_BODY = {("getHealth", "503"): "a health probe reads one Health shape, up or down"}
OPERATION_ID = re.compile(r"^[a-z][A-Za-z]+$")


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return create_app("no_such_minio_conn", "no_such_metadata_conn")


@pytest.fixture(scope="module")
def spec(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in spec["paths"].items() for method, op in item.items()]


def test_every_path_is_versioned(spec: dict[str, Any]) -> None:
    assert spec["paths"], "no paths"
    assert [path for path in spec["paths"] if not path.startswith("/api/v1/")] == []


def test_operation_ids_are_unique_and_readable(spec: dict[str, Any]) -> None:
    ids = [op.get("operationId", "") for _, _, op in operations(spec)]
    assert [i for i in ids if not OPERATION_ID.match(i)] == []
    assert len(ids) == len(set(ids)), sorted(ids)
    assert {"listJobs", "getJob", "listDatasets", "getJobFile", "headJobFile", "createUploads"} <= set(ids)


def test_every_error_answer_is_an_error_body(spec: dict[str, Any]) -> None:
    wrong = []
    for method, path, op in operations(spec):
        for status, response in op["responses"].items():
            if status[0] not in "45" or (op["operationId"], status) in NOT_ERROR_BODY:
                continue
            schema = response.get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("$ref") != ERROR_REF:
                wrong.append((method, path, status, schema))
    assert wrong == []
    body = spec["components"]["schemas"]["ErrorBody"]
    assert set(body["required"]) == {"status", "code", "detail"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's own 422 shape is not used


def test_protected_operations_declare_401_and_403(spec: dict[str, Any]) -> None:
    protected = [(m, p, op) for m, p, op in operations(spec) if op.get("security")]
    assert len(protected) == len(operations(spec)) - 1  # every one but health
    assert [(m, p) for m, p, op in protected if not {"401", "403"} <= set(op["responses"])] == []
    assert all({"500", "503"} <= set(op["responses"]) for _, _, op in operations(spec))


def test_listings_document_their_pages(spec: dict[str, Any]) -> None:
    for path, listed in (("/api/v1/jobs", "JobList"), ("/api/v1/datasets", "DatasetList")):
        op = spec["paths"][path]["get"]
        assert {"limit", "cursor"} <= {p["name"] for p in op["parameters"]}, path
        assert "next_cursor" in spec["components"]["schemas"][listed]["properties"]
    assert {"status", "dataset", "dag_id", "run_id"} <= {
        p["name"] for p in spec["paths"]["/api/v1/jobs"]["get"]["parameters"]
    }
    assert "prefix" in {p["name"] for p in spec["paths"]["/api/v1/datasets"]["get"]["parameters"]}


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:  # httpx's or TestClient's
    assert response.status_code == status, response.text
    body = response.json()
    assert (body["status"], body["code"]) == (status, code), body
    assert body["detail"] and code in CODES
    return body


def test_errors_answered_without_a_backend_are_error_bodies(app: FastAPI) -> None:
    client = TestClient(app)
    missing = client.get("/api/v1/jobs/some-job/results")
    assert "Airflow JWT" in error_of(missing, 401, "unauthenticated")["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    error_of(client.get("/api/v1/no-such-route"), 404, "not_found")
    error_of(client.get("/nowhere"), 404, "not_found")
    error_of(client.delete("/api/v1/health"), 405, "method_not_allowed")
    big = client.post(
        "/api/v1/datasets/ds/uploads", content=b"{}", headers={"Content-Length": str(MAX_REQUEST_BYTES + 1)}
    )
    error_of(big, 413, "body_too_large")


def test_an_unexpected_exception_is_a_500_error_body_that_says_nothing_of_it() -> None:
    app = create_app("no_such_minio_conn", "no_such_metadata_conn")

    @app.get("/boom")  # added after the app: outside /api, which the old paths' catch-all holds
    def boom() -> None:
        raise RuntimeError("secret-host:5432 refused")

    answer = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert "secret-host" not in error_of(answer, 500, "internal_error")["detail"]


def test_old_paths_answer_308_to_their_v1_path_keeping_the_query(app: FastAPI) -> None:
    client = TestClient(app, follow_redirects=False)
    for old, new in (
        ("/api/job/j1/results?lod=1", "/api/v1/jobs/j1/results?lod=1"),
        ("/api/job/j1/files/mesh/a%20b.obj", "/api/v1/jobs/j1/files/mesh/a%20b.obj"),
        ("/api/job/j1/scene", "/api/v1/jobs/j1/scene"),
        ("/api/jobs?status=succeeded", "/api/v1/jobs?status=succeeded"),
        ("/api/jobs/by-run?dag_id=d&run_id=r", "/api/v1/jobs?dag_id=d&run_id=r&limit=1"),
        ("/api/dashboard?days=7", "/api/v1/storage/dashboard?days=7"),
        ("/api/storage/stats", "/api/v1/storage/stats"),
        ("/api/health", "/api/v1/health"),
    ):
        answer = client.get(old)
        assert (answer.status_code, answer.headers.get("location")) == (308, new), old
    post = client.post("/api/datasets/ds/uploads", json={"files": []})
    assert (post.status_code, post.headers["location"]) == (308, "/api/v1/datasets/ds/uploads")
    # followed, the POST stays a POST: the v1 route asks for a token (a GET there would be 404/405)
    followed = TestClient(app).post("/api/datasets/ds/uploads", json={"files": []})
    error_of(followed, 401, "unauthenticated")
    assert followed.history[0].status_code == 308


def test_the_guard_serve_installs_fails_a_test_on_an_undocumented_status() -> None:
    """The negative control: an operation answering a status it does not document is recorded (and so
    fails the test that made the request, through conftest's fixture); a documented one is not."""
    app = create_app("no_such_minio_conn", "no_such_metadata_conn")

    @app.get("/teapot", responses={200: {"description": "tea"}})
    def teapot(brew: bool = False) -> dict[str, str]:
        if brew:
            raise HTTPException(418, "I'm a teapot")
        return {"tea": "ready"}

    url, server, thread = serve(app)
    try:
        assert httpx.get(f"{url}/teapot").status_code == 200
        assert take_undocumented() == []
        assert httpx.get(f"{url}/teapot", params={"brew": "true"}).status_code == 418
        assert take_undocumented() == [("GET", "/teapot", 418)]
        assert httpx.get(f"{url}/api/job/x/scene").status_code == 308  # outside the schema: not checked
        assert take_undocumented() == []
    finally:
        server.should_exit = True
        thread.join(10)
    url, server, thread = serve(Starlette(routes=[Mount("/e2e3d", app=app)]))  # mounted, as the plugin is
    try:
        assert httpx.get(f"{url}/e2e3d/teapot", params={"brew": "true"}).status_code == 418
        assert take_undocumented() == [("GET", "/teapot", 418)]
    finally:
        server.should_exit = True
        thread.join(10)
