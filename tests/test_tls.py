"""TLS on every hop: a stack started with TLS (S3 over HTTPS, PostgreSQL over SSL only, certificates from
the stack's own CA, issued for 127.0.0.1 alone) and every path the lifecycle uses run over it: the data
path (both clients, multipart), content-addressed ingest and staging, a publish and a verified fetch,
pre-signed URLs, the sensors' trigger, the amazon S3Hook on the same connection and the metadata database
with ``sslmode=verify-full``. A client that does not trust the CA, and one that connects by a name the
certificate does not carry, are refused with an error naming the connection."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import urllib.request
from pathlib import Path

import psycopg2
import pytest

from e2e3d_provider.devstack import stack
from e2e3d_provider.devstack.demo import SAMPLE_DIR as SAMPLE
from e2e3d_provider.exceptions import StorageTLSError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from tests.helpers import own_stack_server


@pytest.fixture(scope="module")
def tls_stack(s3_server: str, tmp_path_factory: pytest.TempPathFactory, airflow_db):
    base = tmp_path_factory.mktemp("tls-stack")
    info = stack.start_stack(base, owner_pid=os.getpid(), tls=True, server=own_stack_server(s3_server))
    os.environ["AIRFLOW_CONN_MINIO_TLS"] = json.dumps(info.minio_conn())
    os.environ["AIRFLOW_CONN_PG_TLS"] = json.dumps(info.metadata_conn())
    try:
        yield info
    finally:
        stack.stop_stack(base)


def test_the_tls_stack_serves_https_and_ssl_only(tls_stack) -> None:
    assert tls_stack.s3_endpoint.startswith("https://")
    assert tls_stack.minio_conn()["extra"]["verify"] == tls_stack.ca_file
    with pytest.raises(psycopg2.OperationalError, match=r"no pg_hba.conf entry|SSL off|encryption"):
        psycopg2.connect(
            host="127.0.0.1",
            port=tls_stack.pg_port,
            user=tls_stack.pg_user,
            password=tls_stack.pg_password,
            dbname=tls_stack.pg_database,
            sslmode="disable",
        )


def test_every_transfer_path_and_the_metadata_run_over_tls(tls_stack, tmp_path: Path) -> None:
    from e2e3d_provider.lifecycle.inputs.ingest import ingest
    from e2e3d_provider.lifecycle.results.publish import publish_run
    from e2e3d_provider.lifecycle.results.published import fetch_published
    from e2e3d_provider.lifecycle.worker.input_cache import stage_dataset

    storage = StorageHook("minio_tls", part_size=5 * 1024 * 1024)
    storage.bootstrap()
    metadata = MetadataHook("pg_tls")
    assert metadata.migrate() >= 5
    ingest(storage, SAMPLE, "tls-terrain")  # HEADs and PUTs of the content-addressed blobs
    staged = stage_dataset(storage, tmp_path / "worker", "tls-terrain")  # GETs into the worker's cache
    assert staged.transfer.files == 6 and sorted(p.name for p in staged.local_dir.iterdir()) == sorted(
        p.name for p in SAMPLE.iterdir()
    )
    run = tmp_path / "run"
    (run / "mesh").mkdir(parents=True)
    (run / "mesh" / "reconstructed_mesh.obj").write_bytes(os.urandom(12 * 1024 * 1024))  # multipart
    (run / "logs").mkdir()
    (run / "logs" / "run.log").write_text("ok\n")
    published = publish_run(storage, run, "tls-job", "20260101T000000Z", "output", {})
    assert published.files == 2
    fetched = fetch_published(storage, "tls-job", tmp_path / "fetched")  # ranged GETs, checked against the manifest
    assert fetched.files == 2
    assert (tmp_path / "fetched" / "mesh" / "reconstructed_mesh.obj").read_bytes() == (
        run / "mesh" / "reconstructed_mesh.obj"
    ).read_bytes()
    url = storage.presigned_get("output", "tls-job/logs/run.log")
    assert url.startswith("https://127.0.0.1:")
    context = ssl.create_default_context(cafile=tls_stack.ca_file)
    with urllib.request.urlopen(url, context=context, timeout=30) as response:
        assert response.read() == b"ok\n"
    metadata.record_job("tls-job", "20260101T000000Z", "tls-terrain", "running")
    assert metadata.get_job("tls-job")["status"] == "running"
    with metadata.transaction() as cur:
        cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert cur.fetchone()[0] is True


def test_the_sensors_trigger_and_the_amazon_s3hook_use_the_same_connection(tls_stack) -> None:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from e2e3d_provider.triggers.object_storage import SuccessMarkerTrigger

    StorageHook("minio_tls").put_bytes("output", "tls-marker/SUCCESS", b"{}")
    trigger = SuccessMarkerTrigger("output", "tls-marker/SUCCESS", None, "minio_tls", 0.1)

    async def first_event():
        async for event in trigger.run():
            return event.payload

    payload = asyncio.run(asyncio.wait_for(first_event(), 60))
    assert payload["status"] == "success" and payload["marker_key"] == "tls-marker/SUCCESS", payload
    keys = S3Hook(aws_conn_id="minio_tls").list_keys(bucket_name="output", prefix="tls-marker/")
    assert keys == ["tls-marker/SUCCESS"]


def test_an_untrusting_client_and_a_wrong_host_are_refused_naming_the_connection(tls_stack) -> None:
    conn = tls_stack.minio_conn()
    untrusting = {**conn, "extra": {k: v for k, v in conn["extra"].items() if k != "verify"}}
    wrong_host = {
        **conn,
        "extra": {**conn["extra"], "endpoint_url": conn["extra"]["endpoint_url"].replace("127.0.0.1", "localhost")},
    }
    os.environ["AIRFLOW_CONN_MINIO_UNTRUSTING"] = json.dumps(untrusting)
    os.environ["AIRFLOW_CONN_MINIO_WRONG_HOST"] = json.dumps(wrong_host)
    with pytest.raises(StorageTLSError, match=r"connection 'minio_untrusting'.*(certificate|verify)") as untrusted:
        StorageHook("minio_untrusting").list_keys("output", "x/")
    with pytest.raises(StorageTLSError, match=r"connection 'minio_wrong_host'.*(localhost|[Hh]ostname)"):
        StorageHook("minio_wrong_host").get_bytes("output", "tls-job/logs/run.log")
    assert "after 1 attempt" not in str(untrusted.value)  # not retried: a retry cannot fix a certificate
    with pytest.raises(psycopg2.OperationalError, match=r"certificate|localhost"):
        psycopg2.connect(
            host="localhost",
            port=tls_stack.pg_port,
            user=tls_stack.pg_user,
            password=tls_stack.pg_password,
            dbname=tls_stack.pg_database,
            sslmode="verify-full",
            sslrootcert=tls_stack.ca_file,
        )
