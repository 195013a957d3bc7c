"""Outages are ridden out, not failed: the S3 server stopped for 60 s in the middle of a stage-in and of a
publish (at once), and PostgreSQL restarted under a metadata call. Nothing is retried by hand: each
operation, started before the outage, simply completes after it, whole and verified.

The stack is this module's own (stopping its servers disturbs no other test), on the lane's server.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e3d_provider.core import transfer
from e2e3d_provider.core.retry import attempts_made
from e2e3d_provider.devstack import stack
from e2e3d_provider.exceptions import MetadataError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.inputs.ingest import ingest
from e2e3d_provider.lifecycle.results.publish import publish_run
from e2e3d_provider.lifecycle.worker.input_cache import stage_dataset
from e2e3d_provider.sensors.input_presence import InputPresenceSensor
from tests.helpers import digests, make_dataset, own_stack_server, write_files

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

OUTAGE_SECONDS = 60.0
STAMP = "20261204T120000Z"
FILES = 40


@pytest.fixture(scope="module")
def outage_stack(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.StackInfo]:
    base = tmp_path_factory.mktemp("outage-stack")
    info = stack.start_stack(base, owner_pid=os.getpid(), server=own_stack_server(s3_server))
    os.environ["AIRFLOW_CONN_MINIO_OUTAGE"] = json.dumps(info.minio_conn())
    os.environ["AIRFLOW_CONN_E2E3D_OUTAGE"] = json.dumps(info.metadata_conn())
    StorageHook("minio_outage").bootstrap()
    try:
        yield info
    finally:
        stack.stop_stack(base)
        os.environ.pop("AIRFLOW_CONN_MINIO_OUTAGE", None)
        os.environ.pop("AIRFLOW_CONN_E2E3D_OUTAGE", None)


class Paced:
    """A progress listener that records each transfer's finished files (with when) and holds the transfer's
    loop a moment after each, so the transfers are still under way when the server stops."""

    def __init__(self) -> None:
        self.events: dict[str, list[float]] = {"upload": [], "download": []}

    def __call__(self, label: str, done: int, total: int, finished: bool) -> None:
        kind = label.split(" ", 1)[0]
        if kind in self.events and not finished:
            self.events[kind].append(time.monotonic())
            time.sleep(0.1)

    def started(self) -> bool:
        return all(self.events.values())


def in_thread(results: dict[str, Any], name: str, func: Any) -> threading.Thread:
    def run() -> None:
        try:
            results[name] = func()
        except BaseException as err:  # reported by the test, with its traceback
            results[name] = err
            results[f"{name} finished"] = time.monotonic()
            raise
        results[f"{name} finished"] = time.monotonic()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def test_stage_in_publish_and_a_sensor_ride_out_a_60_s_object_store_outage(
    outage_stack: stack.StackInfo, tmp_path: Path, unique_id: str
) -> None:
    """Every request waits out the outage within the default deadline (120 s): nothing fails, and nothing
    needs a Clear. Two requests at a time, so most of the files are asked for while the server is gone."""
    base = Path(outage_stack.base_dir)
    storage = StorageHook("minio_outage", concurrency=2)
    images = make_dataset(tmp_path / "images", list(range(3000, 3000 + FILES)))
    ingest(storage, tmp_path / "images", unique_id)
    run_dir = tmp_path / "run"
    write_files(run_dir, {f"pointcloud/chunk_{i:02d}.ply": os.urandom(200_000 + i) for i in range(FILES)})
    published = digests(run_dir)

    paced, results = Paced(), {}
    with transfer.watch_progress(paced):
        threads = [
            in_thread(results, "stage-in", lambda: stage_dataset(storage, tmp_path / "worker", unique_id)),
            in_thread(results, "publish", lambda: publish_run(storage, run_dir, unique_id, STAMP, "output")),
        ]
        deadline = time.monotonic() + 120
        while not paced.started():
            assert time.monotonic() < deadline and not results, results
            time.sleep(0.005)
        stack.terminate(stack.read_state(base).s3_pid)  # the S3 server stops: both transfers are mid-way
        stopped = time.monotonic()
        assert not results, f"a transfer ended before the server stopped: {results}"
        sensor = InputPresenceSensor(
            task_id="input_present", dataset=unique_id, min_files=FILES, minio_conn_id="minio_outage"
        )
        threads.append(in_thread(results, "sensor", lambda: sensor.poke({})))  # a poke while it is down
        time.sleep(OUTAGE_SECONDS)
        assert not results, f"ended while the server was down: {results}"
        stack.restart_s3(base)
        back = time.monotonic()
        for thread in threads:
            thread.join(240)
    for name in ("stage-in", "publish", "sensor"):
        assert not isinstance(results.get(name), BaseException), f"{name} failed: {results.get(name)!r}"
        assert results[f"{name} finished"] > back, name
    assert back - stopped >= OUTAGE_SECONDS

    staged = results["stage-in"]
    assert {p.name: p.read_bytes() for p in staged.local_dir.iterdir()} == images
    assert staged.transfer.files == FILES
    assert any(when > back for when in paced.events["download"]), "no image came after the outage"
    assert results["publish"].uploaded_files == FILES
    assert any(when > back for when in paced.events["upload"]), "no file was sent after the outage"
    fetched = tmp_path / "fetched"
    storage.download_prefix("output", f"{unique_id}/", fetched)
    assert {rel: sha for rel, sha in digests(fetched).items() if rel.startswith("pointcloud/")} == published
    assert storage.exists("output", f"{unique_id}/SUCCESS")
    assert results["sensor"].is_done and results["sensor"].xcom_value["count"] == FILES


def start_postgres_again(base: Path, info: stack.StackInfo) -> None:
    """Start the stack's stopped PostgreSQL again on its own port (as a restart of the server does)."""
    folder = stack.stack_path(base)
    pgdata, sockets, log_path = folder / "pgdata", folder / "pgsock", folder / "postgres.log"
    options = f"-h 127.0.0.1 -p {info.pg_port} -k {sockets} -c unix_socket_permissions=0700 -c fsync=off"
    stack._run_pg(
        "pg_ctl", ["-D", str(pgdata), "-w", "-t", "60", "-l", str(log_path), "-o", options, "start"], log_path
    )
    info.pg_pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    stack._write_state(folder, info)  # so the fixture's stop_stack stops this one


@pytest.mark.one_server
def test_metadata_calls_ride_out_a_postgresql_restart(outage_stack: stack.StackInfo, unique_id: str) -> None:
    """A job recorded while PostgreSQL is down for 20 s lands once it is back: the hook connects again
    (jittered backoff) instead of failing. Wrong credentials still fail at the first attempt."""
    base = Path(outage_stack.base_dir)
    metadata = MetadataHook("e2e3d_outage")
    metadata.migrate()
    info = stack.read_state(base)
    assert info is not None
    results: dict[str, Any] = {}
    stack.terminate(info.pg_pid, signal.SIGINT)  # PostgreSQL's fast shutdown
    writer = in_thread(results, "record", lambda: metadata.record_job(unique_id, STAMP, "ds"))
    time.sleep(20)
    assert not results, f"the call ended while PostgreSQL was down: {results}"
    start_postgres_again(base, info)
    back = time.monotonic()
    writer.join(120)
    assert not isinstance(results.get("record"), BaseException), results.get("record")
    assert results["record finished"] > back
    assert metadata.get_job(unique_id)["status"] == "running"

    bad = dict(outage_stack.metadata_conn(), password="not-the-password")
    os.environ["AIRFLOW_CONN_E2E3D_OUTAGE_BADPW"] = json.dumps(bad)
    try:
        with pytest.raises(MetadataError, match="password authentication failed") as refused:
            MetadataHook("e2e3d_outage_badpw").get_job(unique_id)
        assert attempts_made(refused.value.__cause__) == 1  # refused credentials are not an outage
    finally:
        os.environ.pop("AIRFLOW_CONN_E2E3D_OUTAGE_BADPW", None)
