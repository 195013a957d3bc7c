"""Large downloads, spliced from the socket into the file: whole, verified, retried, never partial.

A real TCP proxy in front of the session's S3 server cuts a large object's response part-way, the way a
server restart or a dropped link does (or holds it there, for a process to be killed mid-body); the hook
behind it talks to the real server through it. A very large object goes as parallel ranged GETs: the same
guarantees hold for it, a cut range is asked again from where it stopped, and memory stays bounded.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
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
    are cut there (both sides closed), as a server that dies mid-body would leave them; with ``stall``
    they are held there instead, open and silent, until the proxy is closed."""

    def __init__(self, upstream: tuple[str, int], cut_at: int, cuts: int, stall: bool = False) -> None:
        self.upstream, self.cut_at, self.cuts, self.stall = upstream, cut_at, cuts, stall
        self.released = threading.Event()
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
                        if self.stall:
                            self.released.wait()
                        return
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            _hang_up(src, dst)

    def close(self) -> None:
        self.released.set()
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


# ---------------------------------------------------------------------------------------
# Very large objects: parallel ranged GETs
# ---------------------------------------------------------------------------------------

#: a size that goes by ranges at the default settings (object_io.ranged_plan)
RANGED_SIZE = 40 * MiB


@pytest.fixture
def ranged_object(storage: StorageHook, bucket: str, tmp_path: Path) -> tuple[str, str, bytes]:
    data = os.urandom(RANGED_SIZE)
    src = tmp_path / "scan.bin"
    src.write_bytes(data)
    StorageHook(part_size=8 * MiB).upload_file(src, bucket, "run/scan.bin")  # multipart, tagged with its sha256
    src.unlink()
    return bucket, "run/scan.bin", data


def range_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Records the ``(start, end)`` of every ranged GET (the real function still runs)."""
    calls: list[tuple[int, int]] = []
    real = object_io._fetch_range

    def recording(client, bucket, key, headers, version, start, end, *rest):
        calls.append((start, end))
        return real(client, bucket, key, headers, version, start, end, *rest)

    monkeypatch.setattr(object_io, "_fetch_range", recording)
    return calls


def test_a_very_large_download_goes_by_ranges_and_is_verified(
    ranged_object: tuple[str, str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket, key, data = ranged_object
    calls = range_calls(monkeypatch)
    hook = StorageHook(part_size=8 * MiB)
    plan = object_io.ranged_plan(len(data), 8 * MiB)
    assert plan and len(plan) >= 2
    assert hook.download_file(bucket, key, tmp_path / "by-label.bin")  # checked against its sha256 tag
    assert sorted(calls) == plan, "every range once, none twice"
    assert (tmp_path / "by-label.bin").read_bytes() == data
    calls.clear()
    sha = hashlib.sha256(data).hexdigest()
    assert hook.download_file(bucket, key, tmp_path / "by-manifest.bin", sha256=sha, size=len(data))
    assert sorted(calls) == plan
    assert (tmp_path / "by-manifest.bin").read_bytes() == data
    with pytest.raises(ChecksumMismatchError, match="do not match the manifest"):
        hook.download_file(bucket, key, tmp_path / "other.bin", sha256=hashlib.sha256(b"other").hexdigest())
    assert not (tmp_path / "other.bin").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(PARTIAL_SUFFIX)]


def _ranged_into(storage: StorageHook, bucket: str, key: str, size: int, dest: Path, lead: int | None):
    """``object_io.get_ranged`` of the whole object in 8 MiB ranges, 4 in flight, sha256 on."""
    stat = storage.stat(bucket, key)
    assert stat is not None
    plan = object_io.ranged_plan(size, 8 * MiB)
    assert plan and len(plan) >= 4
    return object_io.get_ranged(
        storage.client, bucket, key, stat.etag, None, None, size, plan, 8 * MiB, dest, lambda f, _: f(),
        sha=True, md5=False, lead=lead,
    )  # fmt: skip


def test_ranges_never_run_far_ahead_of_the_hash(
    storage: StorageHook, ranged_object: tuple[str, str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ranges wait for the in-order hash to come within ``lead`` bytes of where they write (so on busy
    cores the hash, the longest thread of work, keeps its share of the CPU), and still land whole."""
    bucket, key, data = ranged_object
    states: list[object_io._Filled] = []

    class Recorded(object_io._Filled):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            states.append(self)

    monkeypatch.setattr(object_io, "_Filled", Recorded)
    lead = object_io.HASH_WINDOW
    got = _ranged_into(storage, bucket, key, len(data), tmp_path / "paced.bin", lead)
    assert got.sha256 == hashlib.sha256(data).hexdigest() and got.size == len(data)
    assert (tmp_path / "paced.bin").read_bytes() == data
    assert 0 < states[-1].most_ahead <= lead + object_io.SPLICE_CHUNK, states[-1].most_ahead / MiB


def test_a_hash_that_fails_stops_the_ranges_waiting_for_it(
    storage: StorageHook, ranged_object: tuple[str, str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ranges held to the hash's lead would wait for it forever if it died: its failure gives the download up
    at once, and it is that error that is raised."""
    bucket, key, data = ranged_object

    def broken(fd, length, hashes, state) -> None:
        raise OSError("the hashing window could not be mapped")

    monkeypatch.setattr(object_io, "_hash_file_as_written", broken)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            _ranged_into(storage, bucket, key, len(data), tmp_path / "never.bin", object_io.HASH_WINDOW)
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the ranges still wait for a hash that failed"
    assert isinstance(outcome[0], OSError) and "could not be mapped" in str(outcome[0]), outcome


def test_ranges_line_up_with_a_multipart_etag_and_check_it(
    storage: StorageHook, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An object another client uploaded in 5 MiB parts, with no sha256 label: the ranges are whole parts,
    so the parts' MD5s give its multipart ETag back, and that is what the download is checked against."""
    data = os.urandom(RANGED_SIZE)
    src = tmp_path / "foreign.bin"
    src.write_bytes(data)
    storage.client.fput_object(bucket, "run/foreign.bin", str(src), part_size=5 * MiB)
    etag = storage.stat(bucket, "run/foreign.bin").etag
    assert etag.endswith("-8"), etag
    calls = range_calls(monkeypatch)
    assert StorageHook(part_size=8 * MiB).download_file(bucket, "run/foreign.bin", tmp_path / "out.bin")
    assert len(calls) >= 2 and all(start % (5 * MiB) == 0 for start, _ in calls)
    assert (tmp_path / "out.bin").read_bytes() == data
    assert "cannot be checked" not in caplog.text


def test_a_range_cut_mid_body_is_asked_again_from_where_it_stopped(
    ranged_object: tuple[str, str, bytes],
    proxied: tuple[CuttingProxy, dict],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket, key, data = ranged_object
    proxy, _ = proxied
    proxy.cut_at = 3 * MiB  # inside a range: every range is larger
    calls = range_calls(monkeypatch)
    hook = StorageHook("minio_cut", part_size=8 * MiB, attempts=3, retry_delay=0.01)
    assert hook.download_file(bucket, key, tmp_path / "out.bin")
    assert proxy.cut == 1, "the proxy should have cut one response"
    plan = object_io.ranged_plan(len(data), 8 * MiB)
    assert plan is not None
    resumed = [call for call in calls if call not in plan]
    assert len(calls) == len(plan) + 1 and len(resumed) == 1, calls
    start, end = resumed[0]
    assert any(lo < start < hi and end == hi for lo, hi in plan), "only the rest of the cut range is asked again"
    assert hashlib.sha256((tmp_path / "out.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(PARTIAL_SUFFIX)]


def test_a_range_cut_with_no_attempt_left_fails_naming_it_and_leaves_nothing(
    ranged_object: tuple[str, str, bytes], proxied: tuple[CuttingProxy, dict], tmp_path: Path
) -> None:
    bucket, key, _ = ranged_object
    proxy, _ = proxied
    proxy.cut_at = 3 * MiB
    hook = StorageHook("minio_cut", part_size=8 * MiB, attempts=1, retry_delay=0.01)
    with pytest.raises(E2E3DError, match=r"run/scan\.bin") as raised:
        hook.download_file(bucket, key, tmp_path / "dest" / "out.bin")
    assert "closed the connection after" in str(raised.value) or "after 1 attempt" in str(raised.value)
    assert proxy.cut == 1
    assert list((tmp_path / "dest").iterdir()) == [], "neither the file nor a partial one may stay"


FULL_DISK_CHILD = """
import json
import os
import sys
from pathlib import Path
from e2e3d_provider.core import object_io
from e2e3d_provider.hooks.storage import StorageHook

fetched = []
real = object_io._fetch_range

def recording(client, bucket, key, headers, version, start, end, *rest):
    fetched.append(start)
    return real(client, bucket, key, headers, version, start, end, *rest)

object_io._fetch_range = recording
dest = Path(sys.argv[3])
try:
    StorageHook(part_size=8 * 1024 * 1024).download_file(sys.argv[1], sys.argv[2], dest / "out.bin")
    error = ""
except Exception as exc:
    error = f"{type(exc).__name__}: {exc}"
print("RESULT", json.dumps({"error": error, "ranges": len(fetched), "left": os.listdir(dest)}))
"""


def test_a_ranged_download_too_big_for_the_disk_fails_before_any_range_and_leaves_nothing(
    ranged_object: tuple[str, str, bytes], tmp_path: Path
) -> None:
    """The file gets its blocks before the first GET (``fallocate``): a disk without room for the object
    says so at once, with nothing fetched and nothing left, not after filling up part-way. The disk is a
    16 MiB tmpfs in a mount namespace of the child's own; the object is 40 MiB."""
    bucket, key, data = ranged_object
    assert object_io.ranged_plan(len(data), 8 * MiB)
    disk = tmp_path / "small-disk"
    disk.mkdir()
    mount = f"mount -t tmpfs -o size=16m tmpfs {shlex.quote(str(disk))}"
    script = f'{mount} && exec {shlex.quote(sys.executable)} -P -c "$0" "$@"'
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, FULL_DISK_CHILD, bucket, key, str(disk)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert "No space left on device" in result["error"] and "out.bin" in result["error"], result
    assert result["ranges"] == 0, f"{result['ranges']} ranges were fetched into a disk that could not hold them"
    assert result["left"] == [], "neither the file nor a partial one may stay"


def test_a_ranged_download_where_the_disk_cannot_allocate_ahead_goes_into_a_sparse_file(
    ranged_object: tuple[str, str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system without ``fallocate`` (faked: it answers EOPNOTSUPP) still gets the object whole."""
    bucket, key, data = ranged_object
    refused: list[int] = []

    def unsupported(fd: int, mode: int, offset: int, length: int) -> int:
        refused.append(length)
        ctypes.set_errno(errno.EOPNOTSUPP)
        return -1

    monkeypatch.setattr(object_io, "_fallocate", lambda: unsupported)
    assert StorageHook(part_size=8 * MiB).download_file(bucket, key, tmp_path / "out.bin")
    assert refused == [len(data)]
    assert (tmp_path / "out.bin").read_bytes() == data


KILLED_CHILD = """
import sys
from pathlib import Path
from e2e3d_provider.hooks.storage import StorageHook
StorageHook("minio_cut", part_size=8 * 1024 * 1024).download_file(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
"""


def test_a_ranged_download_killed_mid_range_leaves_nothing_under_the_final_name(
    ranged_object: tuple[str, str, bytes], proxied: tuple[CuttingProxy, dict], tmp_path: Path
) -> None:
    bucket, key, data = ranged_object
    proxy, _ = proxied
    proxy.cut_at, proxy.stall = 3 * MiB, True  # one range is held mid-body: the process is killed there
    dest = tmp_path / "dest" / "out.bin"
    dest.parent.mkdir()
    child = subprocess.Popen([sys.executable, "-P", "-c", KILLED_CHILD, bucket, key, str(dest)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not (proxy.cut and [p for p in dest.parent.iterdir() if p.name.endswith(PARTIAL_SUFFIX)]):
            assert child.poll() is None and time.monotonic() < deadline, "the download should be held mid-range"
            time.sleep(0.05)
        time.sleep(0.3)  # the other ranges go on meanwhile
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert not dest.exists(), "a killed download must leave nothing under the final name"
    proxy.close()
    assert StorageHook(part_size=8 * MiB).download_file(bucket, key, dest)  # a rerun lands it whole
    assert dest.read_bytes() == data


MEMORY_CHILD = """
import sys
from pathlib import Path
from e2e3d_provider.hooks.storage import StorageHook

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

hook = StorageHook(part_size=8 * 1024 * 1024)
hook.stat(sys.argv[1], sys.argv[2])  # imports and connections are made before the measure
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # the peak (VmHWM) starts again from the present size
before = status("VmRSS:")
hook.download_file(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
print(status("VmHWM:") - before)
"""


def test_a_ranged_download_holds_little_memory_whatever_the_size(
    storage: StorageHook, bucket: str, tmp_path: Path
) -> None:
    """The ranges go from the socket to the file and the hash reads the page cache a window at a time:
    the process grows by far less than the object, whose size here is several times the bound."""
    size = 160 * MiB
    src = tmp_path / "big.bin"
    with open(src, "wb") as handle:
        for _ in range(size // (8 * MiB)):
            handle.write(os.urandom(8 * MiB))
    StorageHook(part_size=8 * MiB).upload_file(src, bucket, "run/huge.bin")
    assert object_io.ranged_plan(size, 8 * MiB)
    out = subprocess.run(
        [sys.executable, "-P", "-c", MEMORY_CHILD, bucket, "run/huge.bin", str(tmp_path / "out.bin")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # the installed package, as the test's own
    )
    assert out.returncode == 0, out.stderr[-3000:]
    grown = int(out.stdout.split()[-1])
    assert grown < 48 * MiB, f"the process grew by {grown / MiB:.0f} MiB for a {size // MiB} MiB object"
    assert os.path.getsize(tmp_path / "out.bin") == size


def test_ranged_plan_gives_whole_parts_and_enough_ranges() -> None:
    """Ranges cover the object once, in order, each a whole number of upload parts (the last excepted),
    and there are at least as many as run at once; below the threshold, one GET."""
    assert object_io.ranged_plan(object_io.RANGED_MIN - 1, 8 * MiB) is None
    assert object_io.ranged_plan(100 * MiB, 8 * MiB, in_flight=1) is None
    for size, part in ((40 * MiB, 8 * MiB), (40 * MiB, 5 * MiB), (2000 * 1000 * 1000, 8 * MiB), (33 * MiB, 16 * MiB)):
        plan = object_io.ranged_plan(size, part, in_flight=4)
        assert plan is not None
        assert plan[0][0] == 0 and plan[-1][1] == size
        assert all(a[1] == b[0] for a, b in itertools.pairwise(plan))
        assert all(start % part == 0 for start, _ in plan)
        assert len(plan) >= min(4, -(-size // part))


def test_an_allocation_interrupted_by_a_signal_is_asked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``fallocate`` answering EINTR (a signal came first, faked here) is asked again, and the file gets
    its size with its blocks allocated; any other error names the file."""
    real = object_io._fallocate()
    assert real is not None, "Linux has fallocate"
    calls: list[int] = []

    def interrupted_once(fd: int, mode: int, offset: int, length: int) -> int:
        calls.append(length)
        if len(calls) == 1:
            ctypes.set_errno(errno.EINTR)
            return -1
        return real(fd, mode, offset, length)

    monkeypatch.setattr(object_io, "_fallocate", lambda: interrupted_once)
    path = tmp_path / "scan.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    try:
        object_io.reserve(fd, 3 * MiB, path)
    finally:
        os.close(fd)
    assert calls == [3 * MiB, 3 * MiB]
    assert path.stat().st_size == 3 * MiB and path.stat().st_blocks * 512 >= 3 * MiB, "allocated, not sparse"

    def full(fd: int, mode: int, offset: int, length: int) -> int:
        ctypes.set_errno(errno.ENOSPC)
        return -1

    monkeypatch.setattr(object_io, "_fallocate", lambda: full)
    fd = os.open(tmp_path / "other.bin", os.O_RDWR | os.O_CREAT | os.O_EXCL)
    try:
        with pytest.raises(OSError, match=r"cannot make room for 3145728 bytes: '.*other\.bin'") as raised:
            object_io.reserve(fd, 3 * MiB, tmp_path / "other.bin")
    finally:
        os.close(fd)
    assert raised.value.errno == errno.ENOSPC
