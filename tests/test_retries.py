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
    """Faked failures and a faked clock: three transient errors are retried with pauses of 0.5, 1, 2 s
    (the jitter's draw pinned to its top); the fourth attempt's success is returned; a permission error is
    raised at once, marked 1 attempt."""
    from e2e3d_provider.core import retry

    monkeypatch.setattr(retry, "_draw", lambda: 0.0)
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


class FakeClock:
    """A clock that moves only when the retry loop sleeps (sync or async), and a seeded jitter draw."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, seed: int = 29) -> None:
        import random

        from e2e3d_provider.core import retry

        self.now = 1000.0
        self.pauses: list[float] = []
        rng = random.Random(seed)
        self.draws: list[float] = []

        def draw() -> float:
            self.draws.append(rng.random())
            return self.draws[-1]

        async def async_sleep(seconds: float) -> None:
            self.sleep(seconds)

        monkeypatch.setattr(retry, "_clock", lambda: self.now)
        monkeypatch.setattr(retry, "_draw", draw)
        monkeypatch.setattr(retry.time, "sleep", self.sleep)
        monkeypatch.setattr(retry.asyncio, "sleep", async_sleep)

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.pauses.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("run", ["sync", "async"])
def test_the_backoff_is_bounded_jittered_and_ends_at_the_deadline(monkeypatch: pytest.MonkeyPatch, run: str) -> None:
    """A faked clock and a server down for good: each pause lies in the upper half of its bound (0.5 s
    doubling, at most 10 s), the draws differ, and the attempts stop at the deadline: the last pause is cut
    to end exactly there, one last attempt is made, and the error says how many were made and for how long.
    A server back before the deadline (70 s of outage, deadline 120 s) is ridden out."""
    from e2e3d_provider.core import retry

    clock = FakeClock(monkeypatch)

    def call(func, deadline: float):
        if run == "sync":
            return retry.retry_call(func, "get x", deadline=deadline)

        async def wrapped() -> str:
            return func()

        return asyncio.run(retry.retry_call_async(wrapped, "get x", deadline=deadline))

    made: list[float] = []

    def down() -> str:
        made.append(clock.now)
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError) as failed:
        call(down, 120.0)
    bounds = [min(0.5 * 2**i, 10.0) for i in range(len(clock.pauses))]
    for pause, bound in zip(clock.pauses[:-1], bounds, strict=False):
        assert bound / 2 <= pause <= bound
    assert clock.pauses[-1] <= bounds[-1]
    assert max(clock.pauses) <= 10.0 and len(set(clock.pauses[:-1])) == len(clock.pauses) - 1  # jittered
    assert made[-1] - made[0] == pytest.approx(120.0)  # the last attempt at the deadline, none after it
    assert retry.attempts_made(failed.value) == len(made) and 14 <= len(made) <= 24
    assert retry.seconds_spent(failed.value) == pytest.approx(120.0)

    clock.pauses.clear()
    back_at = clock.now + 70.0

    def outage() -> str:
        if clock.now < back_at:
            raise TimeoutError("no answer")
        return "ok"

    assert call(outage, 120.0) == "ok"
    assert 70.0 <= sum(clock.pauses) <= 80.0  # back within one (bounded) pause of the server's return

    clock.pauses.clear()
    with pytest.raises(ConnectionError) as at_once:
        call(down, 0.0)  # a deadline of 0: fail at the first error
    assert clock.pauses == [] and retry.attempts_made(at_once.value) == 1
    with pytest.raises(ValueError, match="cannot be negative"):
        call(down, -1.0)


def test_throttling_answers_are_transient() -> None:
    """MinIO answers an overload with 503 ``TooManyRequests`` (AWS with ``SlowDown``); a HEAD's 503 has no
    body. Each is retried; a 501 or an AccessDenied is not."""
    from minio.error import S3Error, ServerError

    from e2e3d_provider.core.retry import is_transient

    def s3_error(code: str, status: int) -> S3Error:
        response = urllib3.HTTPResponse(body=b"", status=status)
        return S3Error(response, code, "message", "/b/k", "req", "host")

    assert is_transient(s3_error("TooManyRequests", 503))
    assert is_transient(s3_error("SlowDown", 503))
    assert is_transient(s3_error("SomethingNew", 503))
    assert is_transient(ServerError("503 from a HEAD", 503))
    assert not is_transient(s3_error("NotImplemented", 501))
    assert not is_transient(s3_error("AccessDenied", 403))


def test_a_throttled_minio_is_ridden_out_on_the_control_plane(minio_binary: str, tmp_path, monkeypatch) -> None:
    """MinIO with two requests at once and a 1 ms queue deadline refuses many of 30 concurrent puts and
    copies with 503 TooManyRequests; the hook's one retry layer gets every one of them through (a retried
    put sends its bytes again: it once sent the spent stream of the first attempt)."""
    from concurrent.futures import ThreadPoolExecutor

    from airflow.sdk import Connection

    from e2e3d_provider.devstack import minio_server

    monkeypatch.setenv("E2E3D_MINIO_BINARY", minio_binary)
    monkeypatch.setenv("MINIO_API_REQUESTS_MAX", "2")
    monkeypatch.setenv("MINIO_API_REQUESTS_DEADLINE", "1ms")
    port, console = free_ports(2)
    pid = minio_server.launch_minio(
        tmp_path, minio_server.minio_args(tmp_path, port, console, False), port, "throttle", "throttle-secret"
    )
    try:
        extra = json.dumps({"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"})
        conn = Connection(
            conn_id="throttled", conn_type="aws", login="throttle", password="throttle-secret", extra=extra
        )
        hook = StorageHook("throttled", connection=conn, attempts=8, retry_delay=0.05)
        hook.client.make_bucket("throttled")
        payload = b"x" * (1 << 20)

        def put_and_copy(index: int) -> str:
            hook.put_bytes("throttled", f"src/{index}", payload)
            hook.copy_object("throttled", f"src/{index}", "throttled", f"dst/{index}")
            return hook.get_bytes("throttled", f"dst/{index}") == payload and "ok"

        with ThreadPoolExecutor(15) as pool:
            results = list(pool.map(put_and_copy, range(30)))
        assert results == ["ok"] * 30
    finally:
        from e2e3d_provider.devstack.stack import terminate

        terminate(pid)


def test_minio_admin_answers_of_a_server_still_starting_are_transient() -> None:
    """Right after MinIO serves S3 requests its admin API answers 500 "Server not initialized" for a moment:
    the stack's role set-up failed on it under load. Such answers are retried; a refusal is not."""
    from minio.error import MinioAdminException

    from e2e3d_provider.core.retry import is_transient

    starting = MinioAdminException("500", '{"Code":"InternalError","Message":"Server not initialized"}')
    assert is_transient(starting)
    assert not is_transient(MinioAdminException("403", '{"Code":"AccessDenied"}'))


def test_minio_cancelling_a_request_as_it_shuts_down_is_transient() -> None:
    """MinIO stopped mid-PUT answers 499 (it cancelled the request): the outage test's publish failed at once on
    it, now and then, instead of riding the outage out. A 4xx that names the request stays permanent."""
    import obstore.exceptions

    from e2e3d_provider.core.retry import is_transient

    cancelled = obstore.exceptions.GenericError(
        "Generic S3 error: Error performing PUT http://127.0.0.1:9/output/a in 9ms - Server returned non-2xx "
        "status code: 499 <unknown status code>: <?xml"
    )
    assert is_transient(cancelled)
    denied = obstore.exceptions.GenericError(
        "Generic S3 error: Error performing PUT http://127.0.0.1:9/output/a in 9ms - Server returned non-2xx "
        "status code: 403 Forbidden: <?xml"
    )
    assert not is_transient(denied)
