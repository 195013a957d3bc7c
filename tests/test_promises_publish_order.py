"""The commit protocol's order, observed: SUCCESS is the last write of every publish, locally and in the
bucket (DESIGN §4, step 3), and a publish that cannot write its manifest leaves no SUCCESS anywhere.

The order is recorded by a wrapper around a real StorageHook's writing methods: each call goes to the
real server, and is noted (with the keys it wrote) when the server has answered. Nothing is faked but,
where a test says so, one failing write.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from e2e3d_provider.core.layout import archive_prefix
from e2e3d_provider.core.variants import RightSizeRecord, preservation_policy
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.durability.archive import archive_job
from e2e3d_provider.lifecycle.results.handoff import hand_off
from e2e3d_provider.lifecycle.results.publish import publish_handoff, publish_run
from e2e3d_provider.lifecycle.results.published import read_published
from tests.helpers import write_files

STAMP = "20260401T000000Z"
FILES = {
    "mesh/reconstructed_mesh.obj": b"v 1 2 3\n" * 100,
    "textures/texture.png": b"\x89PNG" + b"t" * 2000,
    "pointcloud/pointcloud.ply": b"ply\n" + b"p" * 3000,
    "logs/reconstruct.log": b"ok\n",
}


class WriteLog:
    """A real StorageHook whose writes are noted, in the order the server answered them, as
    ``(operation, bucket, key)``; ``fail_on`` makes the write of one key raise before it is sent."""

    WRITES = ("put_bytes", "upload_file", "send_file", "upload_dir", "upload_objects", "copy_object",
              "delete_object", "delete_keys", "delete_prefix")  # fmt: skip

    def __init__(self) -> None:
        self.hook = StorageHook()
        self.writes: list[tuple[str, str, str]] = []
        self.fail_on: str | None = None
        self.on_write: Any = None  # called with (operation, bucket, key) before each write is sent
        for name in self.WRITES:
            setattr(self.hook, name, self._wrap(name, getattr(self.hook, name)))

    def _wrap(self, name: str, real: Any) -> Any:
        @functools.wraps(real)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bucket, key = self._target(name, args, kwargs)
            if self.on_write is not None:
                self.on_write(name, bucket, key)
            if self.fail_on is not None and key == self.fail_on:
                raise OSError(f"injected failure writing {bucket}/{key}")
            result = real(*args, **kwargs)
            if name in ("upload_dir", "upload_objects"):
                self.writes += [(name, bucket, k) for k in result.keys]
            elif name == "delete_keys":
                self.writes += [(name, bucket, k) for k in args[1]]
            else:
                self.writes.append((name, bucket, key))
            return result

        return wrapper

    @staticmethod
    def _target(name: str, args: tuple, kwargs: dict) -> tuple[str, str]:
        if name in ("upload_file", "send_file"):  # (path, bucket, key)
            return args[1], args[2]
        if name == "upload_dir":  # (local_dir, bucket, prefix)
            return args[1], args[2] if len(args) > 2 else kwargs.get("prefix", "")
        if name in ("copy_object",):  # (src_bucket, src_key, dest_bucket, dest_key)
            return args[2], args[3]
        if name in ("upload_objects", "delete_keys"):
            return args[0], ""
        return args[0], args[1]  # put_bytes, delete_object, delete_prefix: (bucket, key)

    def under(self, bucket: str, prefix: str) -> list[tuple[str, str]]:
        """The writes into ``bucket`` below ``prefix``: (operation, key relative to the prefix)."""
        return [(op, key[len(prefix) :]) for op, b, key in self.writes if b == bucket and key.startswith(prefix)]


def assert_success_last(writes: list[tuple[str, str]], files: set[str]) -> None:
    """In a publish's writes below its prefix: every file, then the manifest, then SUCCESS, and nothing
    after SUCCESS."""
    order = [key for op, key in writes if not op.startswith("delete")]
    assert order, writes
    assert order[-1] == "SUCCESS" and order.count("SUCCESS") == 1, f"SUCCESS is not the last write: {writes}"
    assert writes[-1] == ("put_bytes", "SUCCESS"), f"something was written or removed after SUCCESS: {writes}"
    assert "metadata.json" in order and order.index("metadata.json") < order.index("SUCCESS"), writes
    first_manifest = order.index("metadata.json")
    written_files = {key for key in order[:first_manifest]}
    assert files <= written_files, f"files written after the manifest: {sorted(files - written_files)} ({writes})"


@pytest.fixture
def log(storage: StorageHook) -> WriteLog:  # storage: the session's buckets exist
    return WriteLog()


def test_publish_run_writes_success_last_in_the_bucket_and_on_disk(
    log: WriteLog, bucket: str, tmp_path: Path, unique_id: str
) -> None:
    run = tmp_path / "run"
    write_files(run, FILES)
    local_marker_at_bucket_marker: list[bool] = []

    def look(op: str, target: str, key: str) -> None:
        if key == f"{unique_id}/SUCCESS" and op == "put_bytes":
            local_marker_at_bucket_marker.append((run / "SUCCESS").exists())

    log.on_write = look
    publish_run(log.hook, run, unique_id, STAMP, bucket)
    assert_success_last(log.under(bucket, f"{unique_id}/"), set(FILES))
    # the local marker comes after the bucket's: no SUCCESS on disk vouches for a set the bucket lacks
    assert local_marker_at_bucket_marker == [False] and (run / "SUCCESS").is_file()

    # the rerun of a changed run: its first step removes the old SUCCESS, its last writes the new one
    (run / "mesh/reconstructed_mesh.obj").write_bytes(b"v 9 9 9\n" * 150)
    log.writes.clear()
    publish_run(log.hook, run, unique_id, STAMP, bucket)
    writes = log.under(bucket, f"{unique_id}/")
    assert writes[0] == ("delete_object", "SUCCESS"), writes
    assert_success_last(writes[1:], {"mesh/reconstructed_mesh.obj"})


@pytest.mark.parametrize("failing", ["metadata.json", "SUCCESS"])
def test_a_publish_that_cannot_write_its_manifest_or_marker_leaves_no_success_anywhere(
    log: WriteLog, bucket: str, tmp_path: Path, unique_id: str, failing: str
) -> None:
    run = tmp_path / "run"
    write_files(run, FILES)
    log.fail_on = f"{unique_id}/{failing}"
    with pytest.raises(OSError, match="injected failure"):
        publish_run(log.hook, run, unique_id, STAMP, bucket)
    assert not log.hook.exists(bucket, f"{unique_id}/SUCCESS")
    assert not (run / "SUCCESS").exists()


def test_publish_handoff_writes_success_last(
    log: WriteLog, storage: StorageHook, tmp_path: Path, unique_id: str
) -> None:
    run = tmp_path / "run"
    write_files(run, FILES)
    hand_off(storage, run, unique_id, STAMP)
    publish_handoff(log.hook, unique_id, STAMP, "output")
    writes = log.under("output", f"{unique_id}/")
    assert writes[0] == ("delete_object", "SUCCESS"), writes
    assert_success_last(writes[1:], set(FILES))
    read_published(storage, "output", unique_id)  # the marker names the manifest that is there

    log.writes.clear()
    log.fail_on = f"{unique_id}/metadata.json"
    with pytest.raises(OSError, match="injected failure"):
        publish_handoff(log.hook, unique_id, STAMP, "output")
    assert not storage.exists("output", f"{unique_id}/SUCCESS")


def test_an_archive_writes_its_success_last_and_so_does_the_output_it_trims(
    log: WriteLog, storage: StorageHook, tmp_path: Path, unique_id: str
) -> None:
    """A preservation policy that keeps ``logs/`` only in the archive: the archive copy gets its manifest,
    then its SUCCESS; the output is republished without the logs, its new SUCCESS last."""
    run = tmp_path / "run"
    write_files(run, FILES)
    RightSizeRecord(preservation=preservation_policy({"remove_after_archive": ["logs/"]})).write(run)
    publish_run(storage, run, unique_id, STAMP, "output")
    archived = archive_job(log.hook, unique_id)
    target = archive_prefix(unique_id, STAMP)
    assert archived.archive_key == target
    assert_success_last(log.under("archive", target), set(FILES))

    trimmed = log.under("output", f"{unique_id}/")
    assert trimmed[0] == ("delete_object", "SUCCESS"), trimmed
    assert ("delete_object", "logs/reconstruct.log") in trimmed
    assert trimmed[-2:] == [("put_bytes", "metadata.json"), ("put_bytes", "SUCCESS")], trimmed
    manifest = read_published(storage, "output", unique_id).manifest
    assert "logs/reconstruct.log" not in {e.path for e in manifest.files}
    assert manifest.dropped[-1]["prefix"] == "logs/"
