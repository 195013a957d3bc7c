"""StorageHook against the session's real S3 server: every method, bad input and integrity."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import tracemalloc
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from e2e3d_provider.core.layout import InvalidNameError
from e2e3d_provider.core.transfer import PARTIAL_SUFFIX
from e2e3d_provider.devstack.stack import free_ports
from e2e3d_provider.exceptions import (
    BucketNotFoundError,
    ChecksumMismatchError,
    ObjectNotFoundError,
    SourceChangedError,
    StorageAuthError,
    StorageError,
    StorageUnreachableError,
    UnsafePathError,
)
from e2e3d_provider.hooks.storage import StorageHook
from tests.helpers import write_files

MiB = 1024 * 1024


def sample_files(count: int = 12) -> dict[str, bytes]:
    files = {f"images/img_{i:03d}.jpg": os.urandom(2000 + 997 * i) for i in range(count)}
    files["cameras/intrinsics.json"] = b'{"fx": 1000}'
    return files


def test_bootstrap_is_idempotent_with_versioning_and_lifecycle(storage: StorageHook) -> None:
    states = storage.bootstrap()
    assert set(states) == {"input", "output", "models", "archive"}
    assert set(states.values()) == {"exists"}  # the session fixture created them already
    assert storage.versioning_enabled("output") and storage.versioning_enabled("models")
    assert not storage.versioning_enabled("input")
    assert storage.noncurrent_expiry_days("output") == 30
    storage.bootstrap(buckets=("models",), versioned=("models",), noncurrent_days=7)
    assert storage.noncurrent_expiry_days("models") == 7
    storage.bootstrap(buckets=("models",), versioned=("models",))


def test_bootstrap_creates_missing_buckets(storage: StorageHook) -> None:
    name = f"boot-{os.urandom(4).hex()}"
    assert storage.bootstrap(buckets=(name,), versioned=(name,)) == {name: "created"}
    assert storage.versioning_enabled(name)


def test_upload_then_rerun_sends_only_what_changed(storage: StorageHook, bucket: str, tmp_path: Path) -> None:
    files = sample_files()
    write_files(tmp_path, files)
    first = storage.upload_dir(tmp_path, bucket, "ds1")
    assert (first.files, first.bytes, first.skipped_files) == (len(files), sum(map(len, files.values())), 0)
    assert sorted(storage.list_keys(bucket, "ds1")) == sorted(f"ds1/{rel}" for rel in files)
    for rel, data in files.items():
        assert storage.stat(bucket, f"ds1/{rel}").sha256 == hashlib.sha256(data).hexdigest()

    second = storage.upload_dir(tmp_path, bucket, "ds1")
    assert (second.files, second.bytes, second.skipped_files) == (0, 0, len(files))

    (tmp_path / "images/img_000.jpg").write_bytes(b"changed")
    third = storage.upload_dir(tmp_path, bucket, "ds1")
    assert (third.files, third.bytes, third.skipped_files) == (1, 7, len(files) - 1)
    assert storage.get_bytes(bucket, "ds1/images/img_000.jpg") == b"changed"
    assert third.to_dict()["files"] == 1 and "keys" not in third.to_dict()


def test_second_download_of_an_unchanged_prefix_moves_zero_bytes(
    storage: StorageHook, bucket: str, tmp_path: Path
) -> None:
    files = sample_files()
    write_files(tmp_path / "src", files)
    storage.upload_dir(tmp_path / "src", bucket, "ds2")
    first = storage.download_prefix(bucket, "ds2", tmp_path / "dst")
    assert first.files == len(files) and first.bytes == sum(map(len, files.values()))
    for rel, data in files.items():
        assert (tmp_path / "dst" / rel).read_bytes() == data

    second = storage.download_prefix(bucket, "ds2", tmp_path / "dst")
    assert second.bytes == 0 and second.files == 0
    assert second.skipped_files == len(files)

    (tmp_path / "dst/images/img_003.jpg").write_bytes(b"local damage")  # a damaged cache entry is refetched
    third = storage.download_prefix(bucket, "ds2", tmp_path / "dst")
    assert third.files == 1 and third.bytes == len(files["images/img_003.jpg"])
    assert (tmp_path / "dst/images/img_003.jpg").read_bytes() == files["images/img_003.jpg"]


def test_a_transfer_that_moved_nothing_logs_no_throughput(
    storage: StorageHook,
    bucket: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A rerun that finds everything in place says what it left unchanged, and no MB/s (of bytes that never
    moved); a transfer that moved bytes still says its rate."""
    files = sample_files()
    write_files(tmp_path / "src", files)
    caplog.set_level("INFO")
    capfd.readouterr()

    def lines() -> list[str]:
        """What the transfers logged since last asked: core.transfer's records (stdlib logging) and the hook's
        lines (Airflow's structlog logger, which writes to the console and not through stdlib logging)."""
        said = [record.getMessage() for record in caplog.records]
        captured = capfd.readouterr()
        caplog.clear()
        return said + (captured.out + captured.err).splitlines()

    moved = [
        storage.upload_dir(tmp_path / "src", bucket, "ds3"),
        storage.download_prefix(bucket, "ds3", tmp_path / "dst"),
    ]
    assert all(result.bytes for result in moved)
    said = lines()
    assert len([line for line in said if " sent (" in line and "MB/s" in line]) == 2, said  # each with a rate

    again = [
        storage.upload_dir(tmp_path / "src", bucket, "ds3"),
        storage.download_prefix(bucket, "ds3", tmp_path / "dst"),
    ]
    assert [(result.bytes, result.skipped_files) for result in again] == [(0, len(files))] * 2
    said = lines()
    summaries = [line for line in said if f"0 sent (0.0 MB), {len(files)} unchanged" in line]
    assert len(summaries) == 2, said  # upload and download each say what they left alone ...
    assert not [line for line in said if "MB/s" in line], said  # ... and no throughput


def test_a_download_never_writes_through_a_link_at_a_target_or_on_the_way(
    storage: StorageHook, bucket: str, tmp_path: Path
) -> None:
    """The targets are checked with one listing per folder (not a stat per file): a link planted at a
    target file, or a linked folder on the way, is still refused before any byte is fetched."""
    write_files(tmp_path / "src", {"a.jpg": b"a", "images/b.jpg": b"b"})
    storage.upload_dir(tmp_path / "src", bucket, "ds")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"keep")
    dest = tmp_path / "dst"
    dest.mkdir()
    (dest / "a.jpg").symlink_to(outside / "victim")
    with pytest.raises(UnsafePathError, match=r"a\.jpg is a symbolic link"):
        storage.download_prefix(bucket, "ds", dest)
    (dest / "a.jpg").unlink()
    (dest / "images").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError, match=r"images is a symbolic link"):
        storage.download_prefix(bucket, "ds", dest)
    assert sorted(p.name for p in outside.iterdir()) == ["victim"] and (outside / "victim").read_bytes() == b"keep"
    assert sorted(p.name for p in dest.iterdir()) == ["images"]  # nothing fetched


def test_download_mirror_removes_files_gone_from_the_prefix(storage: StorageHook, bucket: str, tmp_path: Path) -> None:
    write_files(tmp_path / "src", {"a.jpg": b"a", "b.jpg": b"b"})
    storage.upload_dir(tmp_path / "src", bucket, "ds")
    storage.download_prefix(bucket, "ds", tmp_path / "dst")
    storage.delete_object(bucket, "ds/b.jpg")
    result = storage.download_prefix(bucket, "ds", tmp_path / "dst", delete_extraneous=True)
    assert result.removed_files == 1
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["a.jpg"]


def test_multipart_upload_round_trips_with_checksum(connections: dict, bucket: str, tmp_path: Path) -> None:
    hook = StorageHook(part_size=5 * MiB)
    data = os.urandom(12 * MiB + 123)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big.bin").write_bytes(data)
    hook.upload_dir(tmp_path / "src", bucket, "big")
    remote = hook.stat(bucket, "big/big.bin")
    assert remote.size == len(data)
    assert remote.etag and "-" in remote.etag  # really multipart: the ETag is not an MD5
    # streamed in one read: the server's multipart ETag (of the parts as read and hashed) vouches for the
    # stored bytes, and the sha256, known only at the end, is tagged; a checksum known up front is labelled
    parts = [hashlib.md5(data[i : i + 5 * MiB]).digest() for i in range(0, len(data), 5 * MiB)]
    assert remote.etag == hashlib.md5(b"".join(parts)).hexdigest() + f"-{len(parts)}"
    assert remote.sha256 == hashlib.sha256(data).hexdigest()
    assert hook.upload_file(
        tmp_path / "src" / "big.bin", bucket, "big/labelled.bin", sha256=hashlib.sha256(data).hexdigest()
    )
    assert hook.stat(bucket, "big/labelled.bin").sha256 == hashlib.sha256(data).hexdigest()
    assert not hook.upload_file(tmp_path / "src" / "big.bin", bucket, "big/labelled.bin")  # identical: skipped
    hook.download_prefix(bucket, "big", tmp_path / "dst")
    assert (tmp_path / "dst" / "big.bin").read_bytes() == data
    assert not list((tmp_path / "dst").glob("*" + PARTIAL_SUFFIX))
    # the second mirror keeps both: their bytes give the stored multipart ETags
    again = hook.download_prefix(bucket, "big", tmp_path / "dst")
    assert (again.files, again.skipped_files) == (0, 2)


def test_a_multipart_object_whose_part_count_fits_several_part_sizes_downloads(
    connections: dict, bucket: str, tmp_path: Path
) -> None:
    """12,000,000 bytes in two parts fit 6 MiB parts as well as the 8 MiB ones used: the download must
    check the multipart ETag with the parts really used (it once tried 6 MiB and refused good bytes)."""
    hook = StorageHook()  # default 8 MiB parts
    data = os.urandom(12_000_000)
    write_files(tmp_path / "src", {"pointcloud.ply": data})
    hook.upload_dir(tmp_path / "src", bucket, "pc")
    hook.client.delete_object_tags(bucket, "pc/pointcloud.ply")  # as another client writes it: no sha256 tag
    assert hook.stat(bucket, "pc/pointcloud.ply").etag.endswith("-2")
    assert hook.stat(bucket, "pc/pointcloud.ply").sha256 is None
    first = hook.download_prefix(bucket, "pc", tmp_path / "dst")
    assert first.files == 1 and (tmp_path / "dst" / "pointcloud.ply").read_bytes() == data
    assert hook.download_prefix(bucket, "pc", tmp_path / "dst").skipped_files == 1


def test_a_streamed_upload_tags_its_sha256_and_downloads_check_it(
    connections: dict, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A large file's sha256 is known only after it is streamed, so it goes into the ``sha256`` tag;
    a download checks the bytes against it (a wrong tag is refused, nothing lands), ignores a tag that
    is no sha256, and a tag the server would not take leaves a good object and a warning."""
    from minio.commonconfig import Tags

    from e2e3d_provider.core import transfer

    hook = StorageHook(part_size=5 * MiB)
    data = os.urandom(11 * MiB)
    sha = hashlib.sha256(data).hexdigest()
    write_files(tmp_path / "src", {"mesh.obj": data})
    hook.upload_dir(tmp_path / "src", bucket, "tagged")
    key = "tagged/mesh.obj"
    assert hook.client.get_object_tags(bucket, key) == {"sha256": sha}
    assert hook.download_prefix(bucket, "tagged", tmp_path / "ok").files == 1
    assert (tmp_path / "ok" / "mesh.obj").read_bytes() == data

    def tag(value: str) -> None:
        tags = Tags.new_object_tags()
        tags["sha256"] = value
        hook.client.set_object_tags(bucket, key, tags)

    tag("0" * 64)  # a tag that does not fit the bytes: the download refuses them
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        hook.download_prefix(bucket, "tagged", tmp_path / "bad")
    assert not (tmp_path / "bad" / "mesh.obj").exists()
    assert not list(tmp_path.glob("bad/**/*" + PARTIAL_SUFFIX))
    tag("not-a-sha256")  # not a sha256: not used, the multipart ETag is checked instead
    assert hook.download_prefix(bucket, "tagged", tmp_path / "odd").files == 1
    assert (tmp_path / "odd" / "mesh.obj").read_bytes() == data

    def refuse(*args: object) -> None:
        raise PermissionError("AccessDenied: s3:PutObjectTagging")

    monkeypatch.setattr(transfer, "write_sha256_tag", refuse)
    (tmp_path / "src" / "mesh.obj").write_bytes(data[::-1])
    with caplog.at_level("WARNING"):
        assert hook.upload_dir(tmp_path / "src", bucket, "tagged").files == 1
    assert "its sha256 could not be tagged (PermissionError" in caplog.text
    assert hook.client.get_object_tags(bucket, key) is None  # the new version has no tag, and no stale one
    assert hook.download_prefix(bucket, "tagged", tmp_path / "untagged").files == 1
    assert (tmp_path / "untagged" / "mesh.obj").read_bytes() == data[::-1]


def test_memory_stays_flat_for_large_files(connections: dict, bucket: str, tmp_path: Path) -> None:
    hook = StorageHook(part_size=5 * MiB)
    size = 64 * MiB
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "large.bin", "wb") as handle:
        for _ in range(size // MiB):
            handle.write(os.urandom(MiB))
    tracemalloc.start()
    try:
        hook.upload_dir(src, bucket, "large")
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        hook.download_prefix(bucket, "large", tmp_path / "dst")
        _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (tmp_path / "dst" / "large.bin").stat().st_size == size
    # bounded by the parts in flight (5 MiB each here) and the chunks waiting, never by the file size
    from e2e3d_provider.core.object_io import PART_CONCURRENCY, STREAM_CHUNK, STREAM_QUEUE

    assert upload_peak < (PART_CONCURRENCY + 2) * 5 * MiB < size / 2, f"upload peak {upload_peak / MiB:.1f} MiB"
    limit = (STREAM_QUEUE + 2) * STREAM_CHUNK
    assert download_peak < limit < size / 2, f"download peak {download_peak / MiB:.1f} MiB"


def test_corrupted_object_fails_download_and_leaves_no_file(storage: StorageHook, bucket: str, tmp_path: Path) -> None:
    good = os.urandom(50_000)
    write_files(tmp_path / "src", {"scan.jpg": good, "ok.jpg": b"fine"})
    storage.upload_dir(tmp_path / "src", bucket, "ds")
    # Behind the hook's back: other bytes of the same size, carrying the original checksum.
    bad = bytes(b ^ 0xFF for b in good[:10]) + good[10:]
    storage.client.put_object(
        bucket, "ds/scan.jpg", io.BytesIO(bad), len(bad), metadata={"sha256": hashlib.sha256(good).hexdigest()}
    )
    dest = tmp_path / "dst"
    with pytest.raises(ChecksumMismatchError, match=r"ds/scan\.jpg"):
        storage.download_prefix(bucket, "ds", dest)
    assert not (dest / "scan.jpg").exists()
    assert not [p for p in dest.rglob("*") if p.name.endswith(PARTIAL_SUFFIX)]
    with pytest.raises(ChecksumMismatchError):
        storage.download_file(bucket, "ds/scan.jpg", tmp_path / "single.jpg")
    assert not (tmp_path / "single.jpg").exists()


def test_object_replaced_without_checksum_is_checked_by_its_md5_etag(
    storage: StorageHook, bucket: str, tmp_path: Path
) -> None:
    storage.client.put_object(bucket, "ext/plain.jpg", io.BytesIO(b"plain bytes"), 11)  # no sha256 metadata
    result = storage.download_prefix(bucket, "ext", tmp_path)
    assert result.files == 1 and (tmp_path / "plain.jpg").read_bytes() == b"plain bytes"
    assert storage.download_prefix(bucket, "ext", tmp_path).bytes == 0


def test_a_file_that_changes_during_upload_leaves_no_object(storage: StorageHook, bucket: str, tmp_path: Path) -> None:
    path = tmp_path / "moving.bin"
    path.write_bytes(b"new content")
    stale_hash = hashlib.sha256(b"old content").hexdigest()  # what was hashed before the file changed
    with pytest.raises(SourceChangedError, match="changed while it was uploaded"):
        storage.upload_file(path, bucket, "moving.bin", sha256=stale_hash)
    assert not storage.exists(bucket, "moving.bin")


def test_presigned_get_and_put_work_with_a_plain_http_client(storage: StorageHook, bucket: str) -> None:
    storage.put_bytes(bucket, "p/a.bin", b"presigned payload")
    with urllib.request.urlopen(storage.presigned_get(bucket, "p/a.bin", 300)) as response:
        assert response.read() == b"presigned payload"
    put = urllib.request.Request(storage.presigned_put(bucket, "p/up.bin", 300), data=b"uploaded", method="PUT")
    with urllib.request.urlopen(put) as response:
        assert response.status == 200
    assert storage.get_bytes(bucket, "p/up.bin") == b"uploaded"


def test_presigned_urls_are_signed_for_the_public_endpoint_a_browser_reaches(
    storage: StorageHook, bucket: str, connections: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside compose the workers reach MinIO as http://minio:9000, a browser as http://localhost:9000; a
    signature covers the host, so a URL for the browser is signed for the public name (extra
    ``presign_endpoint_url``). Here: the hook talks to 127.0.0.1, the URLs name localhost."""
    storage.put_bytes(bucket, "pub/a.bin", b"public payload")
    internal = connections["minio_default"]["extra"]["endpoint_url"]
    public = internal.replace("127.0.0.1", "localhost")
    conn = {**connections["minio_default"]}
    conn["extra"] = {**conn["extra"], "presign_endpoint_url": public}
    monkeypatch.setenv("AIRFLOW_CONN_PUBLIC_NAME", json.dumps(conn))
    hook = StorageHook("public_name")
    url = hook.presigned_get(bucket, "pub/a.bin", 300)
    assert url.startswith(f"{public}/{bucket}/pub/a.bin?")
    with urllib.request.urlopen(url) as response:
        assert response.read() == b"public payload"
    # the same URL through the workers' name is refused: the signature names the host
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url.replace(public, internal))
    assert caught.value.code == 403
    grant, headers = hook.create_only_grant(bucket, "pub/new.bin", 3, 300)
    assert grant.startswith(f"{public}/{bucket}/pub/new.bin?")
    put = urllib.request.Request(grant, data=b"new", method="PUT", headers=headers)
    with urllib.request.urlopen(put) as response:
        assert response.status == 200
    assert storage.get_bytes(bucket, "pub/new.bin") == b"new"
    monkeypatch.setenv(
        "AIRFLOW_CONN_PUBLIC_NAME", json.dumps({**conn, "extra": {**conn["extra"], "presign_endpoint_url": "ftp://x"}})
    )
    with pytest.raises(StorageError, match="presign_endpoint_url"):
        StorageHook("public_name").presigned_get(bucket, "pub/a.bin", 300)


def test_expired_presigned_url_is_refused(storage: StorageHook, bucket: str) -> None:
    storage.put_bytes(bucket, "p/exp.bin", b"x")
    url = storage.presigned_get(bucket, "p/exp.bin", 1)
    time.sleep(2.5)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url)
    assert caught.value.code == 403


@pytest.mark.parametrize("expires", [0, -5, 8 * 24 * 3600])
def test_presign_expiry_is_bounded(storage: StorageHook, expires: int) -> None:
    with pytest.raises(ValueError, match="between 1 second and 7 days"):
        storage.presigned_get("output", "job/SUCCESS", expires)


def test_list_exists_stat_statistics_and_delete(storage: StorageHook, bucket: str) -> None:
    for i in range(5):
        storage.put_bytes(bucket, f"s/{i}.bin", b"x" * (i + 1))
    storage.put_bytes(bucket, "other/x.bin", b"y")
    assert storage.exists(bucket, "s/3.bin") and not storage.exists(bucket, "s/9.bin")
    assert storage.stat(bucket, "s/9.bin") is None
    assert storage.list_keys(bucket, "s") == [f"s/{i}.bin" for i in range(5)]
    stats = storage.statistics(bucket, "s")
    assert {k: stats[k] for k in ("bucket", "prefix", "objects", "bytes")} == {
        "bucket": bucket,
        "prefix": "s/",
        "objects": 5,
        "bytes": 15,
    }
    assert (stats["versions"], stats["stored_bytes"], stats["noncurrent_bytes"]) == (5, 15, 0)  # unversioned
    assert storage.statistics(bucket)["objects"] == 6
    assert storage.delete_prefix(bucket, "s") == 5
    assert storage.list_keys(bucket, "s") == []
    assert storage.list_keys(bucket) == ["other/x.bin"]
    with pytest.raises(ValueError, match="non-empty prefix"):
        storage.delete_prefix(bucket, "")
    with pytest.raises(ObjectNotFoundError):
        storage.get_bytes(bucket, "s/0.bin")


def test_delete_prefix_on_a_versioned_bucket(storage: StorageHook) -> None:
    prefix = f"v-{os.urandom(4).hex()}"
    storage.put_bytes("output", f"{prefix}/a", b"1")
    storage.put_bytes("output", f"{prefix}/a", b"2")
    assert storage.delete_prefix("output", prefix) == 1
    assert storage.list_keys("output", prefix) == []
    assert storage.delete_prefix("output", prefix, all_versions=True) >= 2


def test_delete_versions_empties_each_key_the_way_its_server_deletes_fastest(
    storage: StorageHook, s3_server: str
) -> None:
    """Every version and delete marker given goes (one request each on SeaweedFS, whose multi-object delete
    is the slow way there; multi-object deletes elsewhere), and deleting them again refuses nothing: a version
    already gone counts as deleted, on either path."""
    prefix = f"dv-{os.urandom(4).hex()}/"
    storage.put_bytes("output", prefix + "a", b"1")
    storage.put_bytes("output", prefix + "a", b"2")
    storage.put_bytes("output", prefix + "b", b"3")
    storage.delete_object("output", prefix + "b")  # a delete marker over b's version
    versions = storage.list_versions("output", prefix)
    assert len(versions) == 4
    if s3_server != "external":
        assert storage.deletes_versions_singly("output") == (s3_server == "seaweedfs")
    pairs = [(v.key, v.version_id) for v in sorted(versions, key=lambda v: v.latest)]
    assert storage.delete_versions("output", pairs) == []
    assert storage.list_versions("output", prefix) == []
    assert storage.delete_versions("output", pairs) == []


def test_health_and_test_connection(storage: StorageHook) -> None:
    ok, message = storage.test_connection()
    assert ok and "output" in message
    health = storage.health()
    assert health["ok"] and health["endpoint"].startswith("http")


def test_missing_bucket_is_a_clear_error(storage: StorageHook, tmp_path: Path) -> None:
    write_files(tmp_path, {"a.jpg": b"a"})
    with pytest.raises(BucketNotFoundError, match=r"'no-such-bucket'.*bootstrap"):
        storage.upload_dir(tmp_path, "no-such-bucket", "ds")
    with pytest.raises(BucketNotFoundError):
        storage.download_prefix("no-such-bucket", "ds", tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "a//b", "a\x00b"])
def test_bad_names_are_rejected_before_any_request(storage: StorageHook, bad: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidNameError):
        storage.download_prefix("input", bad, tmp_path / "dst")
    with pytest.raises(InvalidNameError):
        storage.presigned_get("input", bad)
    with pytest.raises(InvalidNameError):
        storage.upload_file(tmp_path, "input", bad)
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("bad", ["UPPER", "a", "../x", "under_score"])
def test_bad_bucket_names_are_rejected(storage: StorageHook, bad: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidNameError):
        storage.download_prefix(bad, "ds", tmp_path)


def test_prefix_slashes_are_normalised(storage: StorageHook, bucket: str) -> None:
    storage.put_bytes(bucket, "abs/x", b"x")
    assert storage.list_keys(bucket, "/abs/") == ["abs/x"]


def test_wrong_credentials_name_the_connection(
    connections: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bad = dict(connections["minio_default"], password="wrong-secret")
    monkeypatch.setenv("AIRFLOW_CONN_MINIO_BADKEY", json.dumps(bad))
    hook = StorageHook("minio_badkey")
    with pytest.raises(StorageAuthError, match="credentials of connection 'minio_badkey'"):
        hook.list_keys("input")
    ok, message = hook.test_connection()
    assert not ok and "minio_badkey" in message
    assert "wrong-secret" not in message


def test_unreachable_endpoint_fails_after_bounded_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    (port,) = free_ports(1)
    conn = {"conn_type": "aws", "login": "k", "password": "s", "extra": {"endpoint_url": f"http://127.0.0.1:{port}"}}
    monkeypatch.setenv("AIRFLOW_CONN_MINIO_NOWHERE", json.dumps(conn))
    hook = StorageHook("minio_nowhere", attempts=2)
    started = time.monotonic()
    with pytest.raises(StorageUnreachableError, match="unreachable through connection 'minio_nowhere'"):
        hook.list_keys("input")
    assert time.monotonic() - started < 60
    assert hook.health()["ok"] is False


def test_connection_without_endpoint_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_MINIO_NOENDPOINT", json.dumps({"conn_type": "aws", "login": "k", "password": "s"}))
    with pytest.raises(Exception, match="endpoint_url"):
        StorageHook("minio_noendpoint").list_keys("input")


def test_parallel_upload_of_many_small_files(storage: StorageHook, bucket: str, tmp_path: Path) -> None:
    files = {f"f/{i:04d}.bin": os.urandom(100 + i) for i in range(120)}
    write_files(tmp_path, files)
    result = storage.upload_dir(tmp_path, bucket, "many")
    assert result.files == 120 and result.keys == sorted(f"many/{rel}" for rel in files)
    assert storage.statistics(bucket, "many")["bytes"] == sum(map(len, files.values()))


def test_statistics_of_a_versioned_bucket_count_what_the_server_stores(storage: StorageHook, unique_id: str) -> None:
    """'Space used' must not stop at current versions: on the versioned output bucket, overwrites and
    deletes keep their bytes until the noncurrent-version rule expires them."""
    prefix = f"{unique_id}/"
    for body in (b"a" * 10, b"b" * 20, b"c" * 30):  # three versions of one key
        storage.put_bytes("output", prefix + "mesh.obj", body)
    storage.put_bytes("output", prefix + "gone.txt", b"x" * 5)
    storage.delete_object("output", prefix + "gone.txt")  # leaves a delete marker over 5 stored bytes
    stats = storage.statistics("output", prefix)
    assert (stats["objects"], stats["bytes"]) == (1, 30)
    assert (stats["versions"], stats["stored_bytes"], stats["noncurrent_bytes"]) == (4, 65, 35)
    assert stats["delete_markers"] == 1


def test_a_count_split_into_key_ranges_equals_the_whole_count_on_a_versioned_bucket(
    storage: StorageHook, bucket: str
) -> None:
    """The maintenance count lists a large bucket as key ranges side by side; every object, version and
    delete marker lands in exactly one range, whatever sorts between the names it splits at."""
    from minio.versioningconfig import VersioningConfig

    storage.client.set_bucket_versioning(bucket, VersioningConfig("Enabled"))
    expected = dict.fromkeys(("objects", "bytes", "versions", "stored_bytes", "delete_markers"), 0)
    for i in range(300):
        storage.put_bytes(bucket, f"job-{i:04d}/mesh.obj", b"m" * (i % 7 + 1))
        expected["objects"] += 1
        expected["bytes"] += i % 7 + 1
    for i in range(0, 300, 10):  # keys that sort between two top-level names (SeaweedFS cannot hold a key
        # that is also a folder's name, "job-0010" beside "job-0010/...": none here)
        storage.put_bytes(bucket, f"job-{i:04d}.extra", b"e" * 3)
        storage.put_bytes(bucket, f"job-{i:04d}0", b"f")  # after job-NNNN/..., before the next name
        expected["objects"] += 2
        expected["bytes"] += 4
    for i in range(0, 300, 30):  # a second version of some keys, and a delete marker over others
        storage.put_bytes(bucket, f"job-{i:04d}/mesh.obj", b"n" * 100)
        expected["bytes"] += 100 - (i % 7 + 1)
        storage.delete_object(bucket, f"job-{i + 1:04d}/mesh.obj")
        expected["objects"] -= 1
        expected["bytes"] -= (i + 1) % 7 + 1
        expected["delete_markers"] += 1
    expected["versions"] = 300 + 60 + 10
    expected["stored_bytes"] = sum(i % 7 + 1 for i in range(300)) + 30 * 4 + 10 * 100
    whole = storage.statistics(bucket, partitions=1)
    split = storage.statistics(bucket, partitions=4)
    assert "4 key range(s)" in split["how"] and "1 key range(s)" in whole["how"]
    for stats in (whole, split):
        assert {key: stats[key] for key in expected} == expected
        assert stats["noncurrent_bytes"] == expected["stored_bytes"] - expected["bytes"]


def test_create_only_grants_sign_the_condition_this_server_honours(
    storage: StorageHook, bucket: str, s3_server: str
) -> None:
    """A create-only grant signs the first conditional write the server really enforces. SeaweedFS (and
    AWS, and MinIO since 2024) refuse ``If-None-Match: *`` over an existing object with 412; MinIO
    RELEASE.2024-01-01 (the MinIO lane's build) ignores it and replaces the object, but refuses
    ``If-Match`` with an ETag no object has: the hook must use that one there."""
    import uuid

    import httpx

    from e2e3d_provider.core.presign import CREATE_ONLY_CONDITIONS, CREATE_ONLY_HEADERS, upload_headers

    writes = {}  # condition header -> (status of the first write of a new key, status of the second)
    for condition in CREATE_ONLY_CONDITIONS:
        key = f"cond-{uuid.uuid4().hex}"
        headers = upload_headers(5, condition)
        url = storage._signed_put(bucket, key, storage.bound_expiry(60), headers)
        first = httpx.put(url, content=b"first", headers=headers).status_code
        second = httpx.put(url, content=b"again", headers=headers).status_code if first == 200 else None
        writes[next(iter(condition))] = (first, second)
        if first == 200:
            assert storage.get_bytes(bucket, key) == (b"first" if second == 412 else b"again")
    honoured = [c for c in CREATE_ONLY_CONDITIONS if writes[next(iter(c))] == (200, 412)]
    assert honoured, f"this server enforces no conditional create: {writes}"
    assert storage.create_only_condition(bucket) == honoured[0]
    if s3_server == "seaweedfs":
        assert honoured[0] == CREATE_ONLY_HEADERS
    if s3_server == "minio" and "RELEASE.2024-01-01" in minio_release():
        assert writes == {"If-None-Match": (200, 200), "If-Match": (200, 412)}, writes  # the difference, pinned
    # the probe leaves nothing behind
    assert not storage.list_keys(bucket, ".e2e3d-probe/")


def minio_release() -> str:
    """``minio --version`` of the MinIO lane's binary."""
    import shutil
    import subprocess

    binary = os.environ.get("E2E3D_MINIO_BINARY") or shutil.which("minio") or "minio"
    return subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60).stdout


def test_bootstrap_keeps_the_lifecycle_rules_an_operator_added(storage: StorageHook, bucket: str) -> None:
    """A lifecycle PUT replaces a bucket's whole configuration; bootstrap replaces only its own rule."""
    from minio.commonconfig import ENABLED, Filter
    from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

    from e2e3d_provider.hooks.storage import LIFECYCLE_RULE_ID

    operator_rule = Rule(
        ENABLED, rule_filter=Filter(prefix="tmp/"), rule_id="operator-tmp", expiration=Expiration(days=7)
    )
    storage.client.set_bucket_lifecycle(bucket, LifecycleConfig([operator_rule]))
    storage.bootstrap(buckets=(bucket,), versioned=(bucket,), noncurrent_days=9)
    storage.bootstrap(buckets=(bucket,), versioned=(bucket,), noncurrent_days=12)
    rules = {rule.rule_id: rule for rule in storage.client.get_bucket_lifecycle(bucket).rules}
    assert set(rules) == {"operator-tmp", LIFECYCLE_RULE_ID}
    assert rules["operator-tmp"].expiration.days == 7
    assert storage.noncurrent_expiry_days(bucket) == 12
