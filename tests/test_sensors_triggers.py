"""Triggers' async loops against the real server, serialization, and input stability."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
from airflow.sdk._shared.module_loading import import_string

from e2e3d_provider.core.readiness import check_input, matches
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.sensors.input_presence import InputPresenceSensor
from e2e3d_provider.sensors.success_marker import SuccessMarkerSensor
from e2e3d_provider.triggers.object_storage import InputPresenceTrigger, SuccessMarkerTrigger


def round_trip(trigger):
    classpath, kwargs = trigger.serialize()
    json.dumps(kwargs)  # JSON-safe kwargs only
    again = import_string(classpath)(**kwargs)
    assert again.serialize() == (classpath, kwargs)
    return again


async def first_event(trigger, timeout: float = 60.0):
    return await asyncio.wait_for(anext(trigger.run()), timeout)


def test_success_marker_trigger_fires_when_the_marker_appears(storage: StorageHook, unique_id: str) -> None:
    trigger = round_trip(
        SuccessMarkerTrigger("output", f"{unique_id}/SUCCESS", f"{unique_id}/metadata.json", poke_interval=0.5)
    )

    async def scenario():
        async def publish_later() -> None:
            await asyncio.sleep(3)
            await asyncio.to_thread(storage.put_bytes, "output", f"{unique_id}/SUCCESS", b"{}")

        writer = asyncio.create_task(publish_later())
        started = time.monotonic()
        event = await first_event(trigger)
        await writer
        return event, time.monotonic() - started

    event, waited = asyncio.run(scenario())
    assert waited >= 3
    assert event.payload == {
        "status": "success",
        "bucket": "output",
        "marker_key": f"{unique_id}/SUCCESS",
        "manifest_key": f"{unique_id}/metadata.json",
    }


def test_trigger_errors_come_back_as_events(connections: dict) -> None:
    event = asyncio.run(first_event(SuccessMarkerTrigger("no-such-bucket", "job/SUCCESS", poke_interval=0.5)))
    assert event.payload["status"] == "error" and "no-such-bucket" in event.payload["message"]


def test_input_presence_trigger_fires_once_stable(storage: StorageHook, unique_id: str) -> None:
    dataset = f"ds-{unique_id}"
    for i in range(3):
        storage.put_bytes("input", f"{dataset}/img_{i}.png", b"p" * 10)
    trigger = round_trip(
        InputPresenceTrigger("input", f"{dataset}/", ["*.png"], min_files=3, stable_for=1.5, poke_interval=0.5)
    )
    event = asyncio.run(first_event(trigger))
    assert event.payload == {"status": "success", "prefix": f"{dataset}/", "count": 3, "bytes": 30}


def test_input_presence_does_not_fire_while_objects_are_still_added(storage: StorageHook, unique_id: str) -> None:
    dataset = f"ds-{unique_id}"
    sensor = InputPresenceSensor(task_id="present", dataset=dataset, min_files=3, stable_for=2.0, patterns=["*.jpg"])
    storage.put_bytes("input", f"{dataset}/notes.txt", b"not an image")
    fired_while_adding = []
    for i in range(8):  # an upload in progress: one image every 0.5 s for 4 s
        storage.put_bytes("input", f"{dataset}/img_{i}.JPG", b"j" * 100)
        fired_while_adding.append(bool(sensor.poke({})))
        time.sleep(0.5)
    last_add = time.monotonic()
    assert not any(fired_while_adding)
    while not (result := sensor.poke({})):
        assert time.monotonic() - last_add < 10, "never became ready"
        time.sleep(0.25)
    assert result.xcom_value == {"prefix": f"{dataset}/", "count": 8, "bytes": 800}


def test_input_presence_needs_min_files(storage: StorageHook, unique_id: str) -> None:
    dataset = f"ds-{unique_id}"
    storage.put_bytes("input", f"{dataset}/a.jpg", b"a")
    sensor = InputPresenceSensor(task_id="present", dataset=dataset, min_files=2)
    assert not sensor.poke({})
    storage.put_bytes("input", f"{dataset}/sub/b.jpeg", b"b")
    assert sensor.poke({}).xcom_value == {"prefix": f"{dataset}/", "count": 2, "bytes": 2}


def test_check_input_with_a_fake_clock() -> None:
    from datetime import UTC, datetime, timedelta

    from e2e3d_provider.core.transfer import RemoteObject

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    objects = [RemoteObject(f"ds/{i}.jpg", 5, last_modified=t0 + timedelta(seconds=i)) for i in range(3)]
    assert not check_input(objects, "ds/", ["*.jpg"], 4, 0, t0).ready
    assert not check_input(objects, "ds/", ["*.jpg"], 3, 10, t0 + timedelta(seconds=11)).ready
    state = check_input(objects, "ds/", ["*.jpg"], 3, 10, t0 + timedelta(seconds=12))
    assert state.ready and state.to_xcom() == {"prefix": "ds/", "count": 3, "bytes": 15}
    assert matches("a/B.PNG", ["*.png"]) and not matches("a/b.png.txt", ["*.png"]) and matches("x", [])


def test_sensors_validate_arguments_at_parse_time() -> None:
    with pytest.raises(ValueError, match="job_id or key"):
        SuccessMarkerSensor(task_id="s")
    with pytest.raises(ValueError, match="min_files"):
        InputPresenceSensor(task_id="s", dataset="ds", min_files=0)
    sensor = SuccessMarkerSensor(task_id="s2", job_id="job1", deferrable=True)
    assert sensor.deferrable and "hook" not in sensor.__dict__  # nothing opened while parsing
    assert sensor.make_trigger().serialize()[1]["key"] == "job1/SUCCESS"


def test_poke_of_a_bad_job_id_is_rejected_before_any_request(connections: dict) -> None:
    from e2e3d_provider.core.layout import InvalidNameError

    sensor = SuccessMarkerSensor(task_id="s", job_id="../../etc")
    with pytest.raises(InvalidNameError):
        sensor.poke({})


def test_marker_appearing_from_another_thread_is_seen_by_poke(storage: StorageHook, unique_id: str) -> None:
    sensor = SuccessMarkerSensor(task_id="s", job_id=unique_id)
    assert not sensor.poke({})
    writer = threading.Thread(target=storage.put_bytes, args=("output", f"{unique_id}/SUCCESS", b"{}"))
    writer.start()
    writer.join()
    assert sensor.poke({}).xcom_value["marker_key"] == f"{unique_id}/SUCCESS"


class SilentServer:
    """A real TCP server on loopback that accepts connections and never answers, until closed."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        self.server.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        """The listener first, so a retry is refused at once; then the held connections."""
        self.stop.set()
        self.server.close()
        self.thread.join(5)
        for conn in self.held:
            conn.close()


def test_a_trigger_stuck_on_a_silent_endpoint_does_not_hold_up_another(
    storage: StorageHook, unique_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    silent = SilentServer()
    monkeypatch.setenv(
        "AIRFLOW_CONN_MINIO_SILENT",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "k",
                "password": "s",
                "extra": {"endpoint_url": f"http://127.0.0.1:{silent.port}"},
            }
        ),
    )
    storage.put_bytes("output", f"{unique_id}/SUCCESS", b"{}")
    stuck = SuccessMarkerTrigger("output", f"{unique_id}/SUCCESS", minio_conn_id="minio_silent", poke_interval=0.5)
    ready = SuccessMarkerTrigger("output", f"{unique_id}/SUCCESS", poke_interval=0.5)

    async def scenario() -> tuple[object, float, bool]:
        blocked = asyncio.create_task(first_event(stuck, timeout=300))
        try:
            await asyncio.sleep(1.0)  # the stuck trigger is now waiting on the silent socket
            started = time.monotonic()
            event = await first_event(ready, timeout=30)
            return event, time.monotonic() - started, not blocked.done()
        finally:
            blocked.cancel()
            silent.close()  # frees the thread the stuck call holds, so the event loop can close

    event, waited, still_stuck = asyncio.run(scenario())
    assert still_stuck  # the silent endpoint really held its trigger
    assert event.payload["status"] == "success"
    assert waited < 10, f"the second trigger waited {waited:.1f}s behind the stuck one"


def test_the_amazon_providers_deferrable_s3_key_trigger_works_on_our_connection(
    storage: StorageHook, unique_id: str
) -> None:
    """A deferrable S3KeySensor on ``minio_default`` needs aiobotocore, which our install brings."""
    from airflow.providers.amazon.aws.triggers.s3 import S3KeyTrigger

    storage.put_bytes("output", f"{unique_id}/SUCCESS", b"{}")
    trigger = S3KeyTrigger(
        bucket_name="output", bucket_key=f"{unique_id}/SUCCESS", aws_conn_id="minio_default", poke_interval=0.5
    )
    event = asyncio.run(first_event(trigger, timeout=60))
    assert event.payload["status"] == "success", event.payload
