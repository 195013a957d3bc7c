"""An error no retry can cure is tried exactly once: keys the server does not know (or a wrong secret) and
a request the keys are not allowed (AccessDenied), on both clients of the hook (the minio SDK's control
plane and the obstore data path), against the real server. Each call a request makes is counted where the
hook calls its client, and passed on to the real client unchanged."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import obstore
import pytest

from e2e3d_provider.core.retry import attempts_made
from e2e3d_provider.exceptions import StorageAuthError
from e2e3d_provider.hooks.storage import StorageHook

ATTEMPTS = 3  # a transient error would be tried three times


class Calls:
    """Counts the calls of wrapped functions by name; each call runs the real function."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}

    def wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(real)
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count[name] = self.count.get(name, 0) + 1
            return real(*args, **kwargs)

        return counted


def counted_hook(conn_id: str, monkeypatch: pytest.MonkeyPatch) -> tuple[StorageHook, Calls]:
    """A hook of ``conn_id`` that would retry a transient error; its clients' calls are counted."""
    hook = StorageHook(conn_id, attempts=ATTEMPTS, retry_delay=0.01)
    calls = Calls()
    client = hook.client
    for name in ("put_object", "stat_object", "remove_object", "bucket_exists", "get_object", "list_objects"):
        monkeypatch.setattr(client, name, calls.wrap(name, getattr(client, name)))
    for name in ("put_async", "head_async", "get_async", "delete_async"):
        monkeypatch.setattr(obstore, name, calls.wrap(name, getattr(obstore, name)))
    return hook, calls


def refused_once(action: Callable[[], Any], calls: Calls, name: str) -> StorageAuthError:
    calls.count.clear()
    with pytest.raises(StorageAuthError) as refused:
        action()
    assert calls.count.get(name) == 1, f"{name} was called {calls.count.get(name)} times for one refusal: {calls.count}"
    cause = refused.value.__cause__
    if cause is not None:
        assert attempts_made(cause) == 1
    return refused.value


@pytest.fixture
def bad_secret(connections: dict, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(
        "AIRFLOW_CONN_MINIO_BADSECRET", json.dumps(dict(connections["minio_default"], password="x" * 40))
    )
    return "minio_badsecret"


@pytest.fixture
def unknown_key(connections: dict, monkeypatch: pytest.MonkeyPatch) -> str:
    conn = dict(connections["minio_default"], login="NOSUCHKEY0000000000X", password="y" * 40)
    monkeypatch.setenv("AIRFLOW_CONN_MINIO_UNKNOWNKEY", json.dumps(conn))
    return "minio_unknownkey"


@pytest.mark.parametrize("conn", ["bad_secret", "unknown_key"])
def test_keys_the_server_refuses_are_tried_once_on_both_clients(
    storage: StorageHook, tmp_path: Path, unique_id: str, monkeypatch: pytest.MonkeyPatch, conn: str, request
) -> None:
    hook, calls = counted_hook(request.getfixturevalue(conn), monkeypatch)
    key = f"{unique_id}/probe.bin"
    (tmp_path / "probe.bin").write_bytes(b"probe")
    refused_once(lambda: hook.put_bytes("output", key, b"x"), calls, "put_object")
    refused_once(lambda: hook.stat("output", key), calls, "stat_object")
    refused_once(lambda: hook.get_bytes("output", key), calls, "get_object")
    refused_once(lambda: hook.delete_object("output", key), calls, "remove_object")
    refused_once(lambda: hook.bucket_exists("output"), calls, "bucket_exists")
    refused_once(lambda: hook.upload_file(tmp_path / "probe.bin", "output", key), calls, "head_async")


def test_a_request_the_keys_are_not_allowed_is_tried_once_on_both_clients(
    storage: StorageHook, tmp_path: Path, unique_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The api role reads output but may not write it (core/roles.py): every write is AccessDenied."""
    key = f"{unique_id}/probe.bin"
    storage.put_bytes("output", key, b"published")
    (tmp_path / "probe.bin").write_bytes(b"probe")
    hook, calls = counted_hook("minio_api", monkeypatch)
    refused = refused_once(lambda: hook.put_bytes("output", key, b"x"), calls, "put_object")
    assert "AccessDenied" in str(refused)
    refused_once(lambda: hook.delete_object("output", key), calls, "remove_object")
    refused_once(lambda: hook.upload_file(tmp_path / "probe.bin", "output", key), calls, "put_async")
    assert storage.get_bytes("output", key) == b"published"
