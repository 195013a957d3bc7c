"""Large downloads, spliced from the socket into the file: whole, verified, retried, never partial.

A real TCP proxy in front of the session's S3 server cuts a large object's response part-way, the way a
server restart or a dropped link does; the hook behind it talks to the real server through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from e2e3d_provider.core import object_io
from e2e3d_provider.core.transfer import PARTIAL_SUFFIX
from e2e3d_provider.exceptions import ChecksumMismatchError, E2E3DError
from e2e3d_provider.hooks.storage import StorageHook

MiB = 1024 * 1024


def _hang_up(*socks: socket.socket) -> None:
    for sock in socks:  # shutdown first: it wakes the other pump's recv, and the peer sees the end at once
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


class CuttingProxy:
    """Forwards loopback TCP to ``upstream``; the first ``cuts`` responses longer than ``cut_at`` bytes
    are cut there (both sides closed), as a server that dies mid-body would leave them."""

    def __init__(self, upstream: tuple[str, int], cut_at: int, cuts: int) -> None:
        self.upstream, self.cut_at, self.cuts = upstream, cut_at, cuts
        self.cut = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _hang_up(src, dst)

    def _pump_down(self, src: socket.socket, dst: socket.socket) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if sent + len(data) > self.cut_at:
                    with self.lock:
                        cut = self.cut < self.cuts
                        self.cut += cut
                    if cut:
                        dst.sendall(data[: self.cut_at - sent])
                        return
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            _hang_up(src, dst)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def big_object(storage: StorageHook, bucket: str, tmp_path: Path) -> tuple[str, str, bytes]:
    data = os.urandom(24 * MiB)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    StorageHook(part_size=8 * MiB).upload_file(src, bucket, "run/big.bin")
    return bucket, "run/big.bin", data


@pytest.fixture
def proxied(connections: dict, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[CuttingProxy, dict]]:
    endpoint = urlparse(connections["minio_default"]["extra"]["endpoint_url"])
    proxy = CuttingProxy((endpoint.hostname, endpoint.port), cut_at=5 * MiB, cuts=1)
    conn = json.loads(json.dumps(connections["minio_default"]))
    conn["extra"]["endpoint_url"] = f"http://127.0.0.1:{proxy.port}"
    monkeypatch.setenv("AIRFLOW_CONN_MINIO_CUT", json.dumps(conn))
    yield proxy, conn
    proxy.close()


def spliced_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the downloads that went by splice (the real function still runs)."""
    calls: list[int] = []
    real = object_io._splice_into

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(object_io, "_splice_into", counting)
    return calls


def test_a_large_download_goes_by_splice_and_is_verified(
    storage: StorageHook, big_object: tuple[str, str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket, key, data = big_object
    calls = spliced_calls(monkeypatch)
    hook = StorageHook(part_size=8 * MiB)
    assert hook.download_file(bucket, key, tmp_path / "out.bin", sha256=hashlib.sha256(data).hexdigest())
    assert calls, "a large object over plain HTTP should be spliced into its file"
    assert (tmp_path / "out.bin").read_bytes() == data
    with pytest.raises(ChecksumMismatchError, match="do not match the manifest"):
        hook.download_file(bucket, key, tmp_path / "other.bin", sha256=hashlib.sha256(b"other").hexdigest())
    assert not (tmp_path / "other.bin").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(PARTIAL_SUFFIX)]


def test_a_large_download_cut_mid_body_is_retried_and_lands_whole(
    big_object: tuple[str, str, bytes], proxied: tuple[CuttingProxy, dict], tmp_path: Path
) -> None:
    bucket, key, data = big_object
    proxy, _ = proxied
    hook = StorageHook("minio_cut", part_size=8 * MiB, attempts=3, retry_delay=0.01)
    assert hook.download_file(bucket, key, tmp_path / "out.bin")
    assert proxy.cut == 1, "the proxy should have cut one response"
    assert hashlib.sha256((tmp_path / "out.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(PARTIAL_SUFFIX)]


def test_a_large_download_cut_with_no_attempt_left_fails_naming_it_and_leaves_nothing(
    big_object: tuple[str, str, bytes], proxied: tuple[CuttingProxy, dict], tmp_path: Path
) -> None:
    bucket, key, _ = big_object
    proxy, _ = proxied
    hook = StorageHook("minio_cut", part_size=8 * MiB, attempts=1, retry_delay=0.01)
    with pytest.raises(E2E3DError, match=r"run/big\.bin") as raised:
        hook.download_file(bucket, key, tmp_path / "dest" / "out.bin")
    assert "closed the connection after" in str(raised.value) or "after 1 attempt" in str(raised.value)
    assert proxy.cut == 1
    assert list((tmp_path / "dest").iterdir()) == [], "neither the file nor a partial one may stay"
