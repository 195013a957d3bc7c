"""One retry layer: the attempts an error reports are the attempts that were made.

Against a port nothing listens on (connections counted where urllib3 opens them) and against a
real socket that accepts every connection and hangs up at once (connections counted by the server).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from collections.abc import Iterator

import pytest
import urllib3.util.connection

from e2e3d_provider.devstack.stack import free_ports
from e2e3d_provider.exceptions import StorageUnreachableError
from e2e3d_provider.hooks.storage import StorageHook


def reported_attempts(err: BaseException) -> int:
    found = re.search(r"after (\d+) attempts?", str(err))
    assert found, f"the error does not say how many attempts were made: {err}"
    return int(found.group(1))


def hook_for(monkeypatch: pytest.MonkeyPatch, conn_id: str, port: int, attempts: int) -> StorageHook:
    conn = {"conn_type": "aws", "login": "k", "password": "s", "extra": {"endpoint_url": f"http://127.0.0.1:{port}"}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return StorageHook(conn_id, attempts=attempts, retry_delay=0.01)


@pytest.mark.parametrize("attempts", [1, 3])
def test_a_closed_port_is_tried_exactly_as_often_as_the_error_says(
    monkeypatch: pytest.MonkeyPatch, attempts: int
) -> None:
    (port,) = free_ports(1)
    opened: list[tuple[str, int]] = []
    real_connect = urllib3.util.connection.create_connection

    def counting_connect(address, *args, **kwargs):  # counts, then really connects (and is refused)
        opened.append(address)
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", counting_connect)
    hook = hook_for(monkeypatch, "minio_closed", port, attempts)
    with pytest.raises(StorageUnreachableError) as raised:
        hook.list_keys("input")
    assert len(opened) == attempts
    assert reported_attempts(raised.value) == attempts


@pytest.fixture
def hang_up_server() -> Iterator[tuple[int, list[int]]]:
    """A real TCP server on loopback that accepts every connection and closes it without a word."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = [0]
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted[0] += 1
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], accepted
    finally:
        stop.set()
        server.close()
        thread.join(5)


def test_a_server_that_hangs_up_is_tried_exactly_as_often_as_the_error_says(
    monkeypatch: pytest.MonkeyPatch, hang_up_server: tuple[int, list[int]]
) -> None:
    port, accepted = hang_up_server
    hook = hook_for(monkeypatch, "minio_hangup", port, 3)
    with pytest.raises(StorageUnreachableError) as raised:
        hook.bucket_exists("input")
    assert accepted[0] == 3
    assert reported_attempts(raised.value) == 3


def test_the_data_path_is_tried_exactly_as_often_as_the_error_says(
    monkeypatch: pytest.MonkeyPatch, hang_up_server: tuple[int, list[int]], tmp_path
) -> None:
    """The Rust client of the data path runs with its own retries off: our one layer makes the attempts."""
    port, accepted = hang_up_server
    hook = hook_for(monkeypatch, "minio_hangup_data", port, 3)
    (tmp_path / "a.bin").write_bytes(b"payload")
    with pytest.raises(StorageUnreachableError, match="connection 'minio_hangup_data'") as raised:
        hook.upload_file(tmp_path / "a.bin", "input", "a.bin")
    assert accepted[0] == 3
    assert reported_attempts(raised.value) == 3


@pytest.mark.parametrize("run", ["sync", "async"])
def test_the_retry_loop_backs_off_doubling_and_stops_at_the_first_lasting_error(
    monkeypatch: pytest.MonkeyPatch, run: str
) -> None:
    """Faked failures and a faked clock: three transient errors are retried with pauses of 0.5, 1, 2 s;
    the fourth attempt's success is returned; a permission error is raised at once, marked 1 attempt."""
    from e2e3d_provider.core import retry

    pauses: list[float] = []

    async def fake_async_sleep(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(retry.time, "sleep", pauses.append)
    monkeypatch.setattr(retry.asyncio, "sleep", fake_async_sleep)

    def calls(errors: list[BaseException]):
        made = []

        def func() -> str:
            made.append(1)
            if errors:
                raise errors.pop(0)
            return "ok"

        return func, made

    def call(func, attempts: int):
        if run == "sync":
            return retry.retry_call(func, "get x", attempts=attempts, delay=0.5)

        async def wrapped() -> str:
            return func()

        return asyncio.run(retry.retry_call_async(wrapped, "get x", attempts=attempts, delay=0.5))

    func, made = calls([ConnectionError("reset"), TimeoutError("slow"), ConnectionError("reset")])
    assert call(func, 4) == "ok"
    assert (len(made), pauses) == (4, [0.5, 1.0, 2.0])

    pauses.clear()
    func, made = calls([ConnectionError("reset")] * 5)
    with pytest.raises(ConnectionError) as failed:
        call(func, 3)
    assert (len(made), pauses, retry.attempts_made(failed.value)) == (3, [0.5, 1.0], 3)

    pauses.clear()
    func, made = calls([PermissionError("denied"), ConnectionError("never reached")])
    with pytest.raises(PermissionError) as failed:
        call(func, 3)
    assert (len(made), pauses, retry.attempts_made(failed.value)) == (1, [], 1)
    with pytest.raises(ValueError, match="at least 1"):
        call(func, 0)
