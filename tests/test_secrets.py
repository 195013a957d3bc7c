"""No secret anywhere: the lifecycle and the API's error paths are run against the real stack, and every
log line, task output, XCom, error body and exception message they produce is scanned for the stack's
secrets (every role's S3 secret key, the PostgreSQL password, the JWT signing secret, the users' tokens).
Error bodies also carry no stack trace and no internal endpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from e2e3d_provider.api.app import create_app
from e2e3d_provider.devstack.demo import SAMPLE_DIR as SAMPLE
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.inputs.ingest import ingest
from tests.helpers import as_user, load_repo_dag, serve


def stack_secrets(stack_info) -> dict[str, str]:
    found = {
        "s3 secret key (admin)": stack_info.secret_key,
        "postgres password": stack_info.pg_password,
        "jwt secret": os.environ["AIRFLOW__API_AUTH__JWT_SECRET"],
    }
    for role, (_, secret) in stack_info.role_keys.items():
        found[f"s3 secret key ({role})"] = secret
    return found


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value and value in text]


def test_the_lifecycle_writes_no_secret_to_any_log_output_or_xcom(
    stack_info,
    airflow_db,
    storage: StorageHook,
    metadata: MetadataHook,
    tmp_path: Path,
    unique_id: str,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    secrets = stack_secrets(stack_info)
    monkeypatch.setenv("E2E3D_DATA_ROOT", str(tmp_path / "data"))
    caplog.set_level("DEBUG")
    dataset = f"ds-{unique_id}"
    ingest(storage, SAMPLE, dataset)
    dag = load_repo_dag("e2e3d_reconstruction.py", "e2e3d_reconstruction")
    run = dag.test(run_conf={"dataset": dataset, "job_id": unique_id})
    assert str(run.state) == "success"
    # an error path: the reconstruction refuses input that is not an image (as a corrupt upload would be)
    storage.put_bytes("input", f"{dataset}-bad/view_01.jpg", b"not an image at all")
    failed = dag.test(run_conf={"dataset": f"{dataset}-bad", "job_id": f"{unique_id}-x"})
    assert str(failed.state) == "failed"
    out, err = capfd.readouterr()
    assert out.count("\n") > 50  # the tasks' logs were captured: the scan below reads something
    assert not leaks(out + err, secrets), "a secret is in the task output"
    assert not leaks(caplog.text, secrets), "a secret is in a log record"
    logs = "".join(p.read_text(errors="replace") for p in Path(os.environ["AIRFLOW_HOME"]).rglob("*.log"))
    assert not leaks(logs, secrets), "a secret is in a log file"
    with create_session() as session:
        values = [
            json.dumps(x.value, default=str)
            for x in session.query(XComModel).filter(XComModel.run_id.in_([run.run_id, failed.run_id]))
        ]
    assert len(values) > 10 and not leaks("".join(values), secrets), "a secret is in an XCom"
    job = metadata.get_job(f"{unique_id}-x")
    assert job is not None and not leaks(json.dumps(job, default=str), secrets)


def test_api_errors_carry_no_secret_trace_or_endpoint(
    stack_info, api: str, connections, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = stack_secrets(stack_info)
    bodies: list[str] = []
    token_headers = as_user("viewer")
    secrets["viewer token"] = token_headers["Authorization"].split()[1]
    for method, path, body in (
        ("GET", "/api/v1/jobs/never-published/results", None),
        ("GET", "/api/v1/jobs/a..b/results", None),
        ("GET", "/api/v1/jobs/x/results?expires=0", None),
        ("POST", "/api/v1/datasets/ds/uploads", {"files": ["../etc/passwd"]}),
        ("POST", "/api/v1/datasets/ds/uploads", {"files": [{"name": "a.txt", "bytes": -1}]}),
        ("POST", "/api/v1/datasets/ds/commit", {"reuse": [{"file": "a.jpg", "bytes": 1, "sha256": "0" * 64}]}),
        ("GET", "/api/v1/storage/dashboard?days=0", None),
    ):
        response = httpx.request(method, f"{api}{path}", json=body, headers=as_user("runner"))
        assert response.status_code >= 400, path
        bodies.append(response.text)
    bodies.append(httpx.get(f"{api}/api/v1/jobs/x/results", headers={"Authorization": "Bearer not-a-token"}).text)
    bodies.append(httpx.get(f"{api}/dashboard").text)
    # storage unreachable and credentials refused: the errors that would be tempted to say too much
    monkeypatch.setenv(
        "AIRFLOW_CONN_MINIO_WRONG_SECRET",
        json.dumps({**connections["minio_api"], "password": "not-the-secret"}),
    )
    url, server, thread = serve(create_app("minio_wrong_secret", "e2e3d_metadata"))
    try:
        grant = httpx.post(
            f"{url}/api/v1/datasets/ds/uploads",
            json={"files": [{"name": "a.jpg", "bytes": 1}]},
            headers=as_user("runner"),
        )
        assert grant.status_code >= 500 and "minio_wrong_secret" in grant.text
        bodies.append(grant.text)
    finally:
        server.should_exit = True
        thread.join(10)
    everything = "\n".join(bodies)
    assert not leaks(everything, secrets), everything
    assert "Traceback" not in everything and 'File "' not in everything
    assert f":{stack_info.s3_port}" not in everything and f":{stack_info.pg_port}" not in everything


def test_exception_messages_name_the_connection_not_its_secret(stack_info, connections, monkeypatch) -> None:
    from e2e3d_provider.exceptions import E2E3DError

    secrets = stack_secrets(stack_info)
    wrong = {**connections["minio_worker"], "password": secrets["s3 secret key (api)"]}  # another role's secret
    monkeypatch.setenv("AIRFLOW_CONN_MINIO_MIXED_UP", json.dumps(wrong))
    monkeypatch.setenv(
        "AIRFLOW_CONN_PG_WRONG", json.dumps({**connections["e2e3d_metadata"], "password": "wrong-" + "p" * 12})
    )
    messages = []
    for call in (
        lambda: StorageHook("minio_mixed_up").list_keys("output", "x/"),
        lambda: MetadataHook("pg_wrong").get_job("x"),
    ):
        with pytest.raises(E2E3DError) as caught:
            call()
        messages.append(str(caught.value) + repr(caught.value.__cause__ or ""))
    assert "minio_mixed_up" in messages[0] and "pg_wrong" in messages[1]
    assert not leaks("\n".join(messages), {**secrets, "wrong pg password": "wrong-" + "p" * 12}), messages
