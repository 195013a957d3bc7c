"""Storage hygiene (lifecycle/maintenance/hygiene.py, devstack/volumes.py) on real SeaweedFS and PostgreSQL.

The stray-object tests run on buckets of their own, so a real run with no grace removes nothing another
test of the session still needs, and every count can be exact.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from e2e3d_provider.core.dataset_manifest import DatasetImage, DatasetManifest
from e2e3d_provider.core.layout import blob_key, work_prefix
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.durability.archive import archive_job
from e2e3d_provider.lifecycle.inputs.datasets import write_dataset
from e2e3d_provider.lifecycle.locks import job_lock
from e2e3d_provider.lifecycle.maintenance import hygiene
from e2e3d_provider.lifecycle.results.publish import publish_run
from e2e3d_provider.lifecycle.results.published import read_published, verify_remote
from tests.helpers import write_files

STAMP = "20260105T000000Z"
LATER = "20260106T000000Z"
FILES = {"mesh/reconstructed_mesh.obj": b"v 1 2 3\n" * 200, "logs/reconstruct.log": b"ok\n"}
NO_GRACE = timedelta(0)
PART = 5 * 1024 * 1024  # the smallest part S3 takes (but for the last)


def fresh_bucket(storage: StorageHook) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    storage.client.make_bucket(name)
    return name


def stray_run(storage: StorageHook, metadata: MetadataHook, out: str, inp: str, arc: str, **kwargs):
    return hygiene.stray_objects(
        storage,
        metadata,
        kwargs.pop("grace", NO_GRACE),
        output_bucket=out,
        input_bucket=inp,
        archive_bucket=arc,
        **kwargs,
    )


def publish(storage: StorageHook, root: Path, job_id: str, bucket: str) -> None:
    write_files(root, FILES)
    publish_run(storage, root, job_id, STAMP, bucket)


def assert_published(storage: StorageHook, bucket: str, job_id: str, prefix: str | None = None) -> None:
    published = read_published(storage, bucket, job_id, prefix)  # SUCCESS still names its manifest
    verify_remote(storage, bucket, prefix or f"{job_id}/", published.manifest)


# ---------------------------------------------------------------------------------------
# Multipart uploads
# ---------------------------------------------------------------------------------------


def start_upload(storage: StorageHook, bucket: str, key: str) -> str:
    upload_id = storage.client._create_multipart_upload(bucket, key, {})
    storage.client._upload_part(bucket, key, b"p" * PART, {}, upload_id, 1)
    return upload_id


def test_stale_multipart_uploads_are_aborted_and_younger_ones_kept(
    storage: StorageHook, bucket: str, s3_server: str
) -> None:
    if not storage.lists_uploads_by_prefix(bucket):
        # MinIO lists incomplete uploads only for an exact key: the sweep cannot see them, and says so
        assert s3_server == "minio", f"{s3_server} should list uploads by prefix"
        upload = start_upload(storage, bucket, "uploads/old.bin")
        assert storage.list_multipart_uploads(bucket) == []  # the difference, pinned
        exact = storage.client._list_multipart_uploads(bucket, prefix="uploads/old.bin")
        assert [u.upload_id for u in exact.uploads] == [upload]
        report = hygiene.abort_stale_uploads(storage, NO_GRACE, (bucket,))
        assert report["buckets"][bucket]["skipped"] == hygiene.SERVER_EXPIRES_UPLOADS
        assert report["aborted"] == 0
        assert storage.abort_multipart_upload(bucket, "uploads/old.bin", upload)
        return
    assert s3_server != "minio"
    old = start_upload(storage, bucket, "uploads/old.bin")
    time.sleep(2.2)  # the server stamps an upload's start to the second
    young = start_upload(storage, bucket, "uploads/young.bin")
    listed = {u.upload_id: u for u in storage.list_multipart_uploads(bucket)}
    assert set(listed) == {old, young}
    assert storage.multipart_upload_bytes(bucket, "uploads/old.bin", old) == PART
    # the bound falls between the two starts: the first is older than it, the second younger
    now = datetime.now(UTC)
    bound = now - listed[old].initiated - timedelta(seconds=1)

    report = hygiene.abort_stale_uploads(storage, bound, (bucket,), now=now)

    assert report["buckets"][bucket] == {"aborted": 1, "bytes": PART, "sample": ["uploads/old.bin"]}
    assert [u.upload_id for u in storage.list_multipart_uploads(bucket)] == [young]
    report = hygiene.abort_stale_uploads(storage, NO_GRACE, (bucket,))
    assert (report["buckets"][bucket]["aborted"], report["buckets"][bucket]["bytes"]) == (1, PART)
    assert storage.list_multipart_uploads(bucket) == []


# ---------------------------------------------------------------------------------------
# Stray objects
# ---------------------------------------------------------------------------------------


def test_strays_in_output_and_archive_are_reported_then_deleted_and_published_sets_stay_whole(
    storage: StorageHook, metadata: MetadataHook, tmp_path: Path, unique_id: str
) -> None:
    out, inp, arc = (fresh_bucket(storage) for _ in range(3))
    published, unfinished, running, damaged = (f"{unique_id}-{n}" for n in ("pub", "half", "run", "bad"))
    publish(storage, tmp_path / "pub", published, out)
    archive_job(storage, published, source_bucket=out, archive_bucket=arc)
    publish(storage, tmp_path / "bad", damaged, out)
    storage.put_bytes(out, f"{damaged}/metadata.json", b'{"forged": true}')  # SUCCESS no longer vouches for it
    strays = {
        f"{published}/mesh/leftover.obj",  # below a published job, named by no manifest
        f"{unfinished}/mesh/reconstructed_mesh.obj",  # a job that never got SUCCESS and runs no more
        work_prefix(published, STAMP) + "mesh/reconstructed_mesh.obj",  # the hand-off of a finished run
    }
    kept = {
        f"{running}/mesh/reconstructed_mesh.obj",  # no SUCCESS yet, but a run is in flight
        work_prefix(running, LATER) + "mesh/reconstructed_mesh.obj",  # that run's hand-off
        f"{damaged}/mesh/leftover.obj",  # below a damaged set: left for a person
    }
    for key in strays | kept:
        storage.put_bytes(out, key, b"stray bytes")
    metadata.record_job(running, LATER, "dataset-x", "running")
    archive_strays = {
        f"{published}/{published}_{STAMP}/mesh/leftover.obj",  # in an archived run, named by no manifest
        f"{published}/{published}_{LATER}/mesh/reconstructed_mesh.obj",  # an archive copy that never finished
    }
    for key in archive_strays:
        storage.put_bytes(arc, key, b"archive stray")

    assert stray_run(storage, metadata, out, inp, arc, grace=timedelta(days=1))["objects"] == 0  # all too young

    dry = stray_run(storage, metadata, out, inp, arc)
    assert set(dry["buckets"][out]["sample"]) == strays
    assert dry["buckets"][out]["bytes"] == len(b"stray bytes") * len(strays)
    assert dry["buckets"][out]["damaged"] == [f"{damaged}/"]
    assert set(dry["buckets"][arc]["sample"]) == archive_strays
    assert dry["deleted"] == 0
    assert all(storage.exists(out, key) for key in strays) and all(storage.exists(arc, k) for k in archive_strays)

    of_published = {key for key in strays if published in key}
    with job_lock(metadata, published):  # a publish of this job holds its lock: its strays wait
        busy = stray_run(storage, metadata, out, inp, arc, dry_run=False)
    assert busy["buckets"][out]["busy"] == [published]
    assert set(busy["buckets"][out]["sample"]) == strays - of_published
    assert all(storage.exists(out, key) for key in of_published)

    real = stray_run(storage, metadata, out, inp, arc, dry_run=False)
    assert set(real["buckets"][out]["sample"]) == of_published
    assert real["buckets"][out]["deleted"] == len(of_published)
    assert not any(storage.exists(out, key) for key in strays)
    assert all(storage.exists(out, key) for key in kept)
    assert not any(storage.exists(arc, key) for key in archive_strays)
    assert_published(storage, out, published)
    assert_published(storage, arc, published, f"{published}/{published}_{STAMP}/")
    assert storage.exists(out, f"{damaged}/SUCCESS")
    assert stray_run(storage, metadata, out, inp, arc)["objects"] == 0


def test_images_no_dataset_names_are_strays(storage: StorageHook, metadata: MetadataHook, unique_id: str) -> None:
    out, inp, arc = (fresh_bucket(storage) for _ in range(3))
    named, unnamed = b"an image a dataset names", b"an image no dataset names"
    shas = {data: hashlib.sha256(data).hexdigest() for data in (named, unnamed)}
    for data, sha in shas.items():
        storage.put_bytes(inp, blob_key(sha), data)
    image = DatasetImage("img/0001.jpg", len(named), shas[named])
    write_dataset(storage, DatasetManifest(unique_id, [image]), inp)

    dry = stray_run(storage, metadata, out, inp, arc)
    assert dry["buckets"][inp]["sample"] == [blob_key(shas[unnamed])]
    assert dry["buckets"][inp]["bytes"] == len(unnamed)
    assert storage.exists(inp, blob_key(shas[unnamed]))

    real = stray_run(storage, metadata, out, inp, arc, dry_run=False)
    assert real["buckets"][inp]["deleted"] == 1
    assert not storage.exists(inp, blob_key(shas[unnamed]))
    assert storage.exists(inp, blob_key(shas[named]))

    storage.put_bytes(inp, f"{unique_id}-broken/dataset.json", b"not a manifest")
    storage.put_bytes(inp, blob_key(shas[unnamed]), unnamed)
    unsure = stray_run(storage, metadata, out, inp, arc, dry_run=False)
    assert unsure["buckets"][inp]["unreadable_manifest"] is True  # what it names cannot be known: none goes
    assert storage.exists(inp, blob_key(shas[unnamed]))


# ---------------------------------------------------------------------------------------
# PostgreSQL and SeaweedFS
# ---------------------------------------------------------------------------------------


def dead_rows(metadata: MetadataHook, table: str) -> int:
    return metadata.table_health()[table]["dead_rows"]


def test_tables_with_many_dead_rows_are_vacuumed(metadata: MetadataHook, unique_id: str) -> None:
    started = datetime.now(UTC)
    with metadata.transaction() as cur:  # autovacuum must not get there first
        cur.execute("ALTER TABLE e2e3d.config SET (autovacuum_enabled = false)")
    try:
        vacuum_dead_rows(metadata, unique_id, started)
    finally:
        with metadata.transaction() as cur:
            cur.execute("ALTER TABLE e2e3d.config RESET (autovacuum_enabled)")


def vacuum_dead_rows(metadata: MetadataHook, unique_id: str, started: datetime) -> None:
    with metadata.transaction() as cur:
        cur.execute(
            "INSERT INTO e2e3d.config (key, value) SELECT %s || g, '{}'::jsonb FROM generate_series(1, 500) g",
            (f"{unique_id}-",),
        )
    with metadata.transaction() as cur:
        cur.execute("DELETE FROM e2e3d.config WHERE starts_with(key, %s)", (f"{unique_id}-",))
        cur.execute("SELECT pg_stat_force_next_flush()")
    deadline = time.monotonic() + 15
    while dead_rows(metadata, "config") < 500 and time.monotonic() < deadline:
        time.sleep(0.2)  # the statistics are flushed after the transaction ends
    assert dead_rows(metadata, "config") >= 500

    assert hygiene.vacuum_metadata(metadata, min_dead_rows=10**9)["vacuumed"] == {}  # under the bound: untouched
    report = hygiene.vacuum_metadata(metadata, dead_share=0.2, min_dead_rows=50)

    config = report["vacuumed"]["config"]
    assert config["dead_rows_before"] >= 500
    assert config["dead_rows_after"] < config["dead_rows_before"]
    assert config["bytes_after"] <= config["bytes_before"]
    with metadata.transaction() as cur:
        cur.execute("SELECT last_vacuum FROM pg_stat_user_tables WHERE schemaname = 'e2e3d' AND relname = 'config'")
        assert cur.fetchone()[0] >= started - timedelta(seconds=1)


@pytest.mark.servers("seaweedfs")
def test_seaweedfs_volumes_give_back_the_space_of_deleted_objects(
    storage: StorageHook, bucket: str, stack_info
) -> None:
    if stack_info is None:
        pytest.skip("volume compaction is the embedded stack's (SeaweedFS); MinIO reclaims space itself")
    from e2e3d_provider.devstack.volumes import vacuum_volumes

    assert hygiene.vacuum_volumes(None) == {
        "skipped": "no volume compaction is configured ([e2e3d] volume_vacuum): nothing was compacted"
    }
    keys = [f"garbage/{i:02d}.bin" for i in range(20)]
    for key in keys:
        storage.put_bytes(bucket, key, os.urandom(1024 * 1024))  # random: no volume compresses it
    storage.delete_keys(bucket, keys)
    base = Path(stack_info.base_dir)
    reclaimed, deadline = 0, time.monotonic() + 60
    while reclaimed < 20 * 1024 * 1024 and time.monotonic() < deadline:
        time.sleep(0.5)  # the filer frees a deleted object's chunks in the background
        report = hygiene.vacuum_volumes(lambda: vacuum_volumes(base))
        assert report["bytes_after"] <= report["bytes_before"]
        reclaimed += report["reclaimed_bytes"]
        if report["reclaimed_bytes"]:  # the report says it in words too
            assert report["compacted"] >= 1
            assert report["done"].startswith(f"compacted {report['compacted']} of {report['volumes']} SeaweedFS")
    assert reclaimed >= 20 * 1024 * 1024


def test_the_maintenance_dag_finds_the_stack_its_components_run_on(
    stack_info, storage: StorageHook, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `e2e3d airflow --dir X` the components had no E2E3D_STACK_DIR: maintenance looked for the stack in
    the default directory, never compacted SeaweedFS's volumes and said "this object store reclaims a deleted
    object's space itself". Each component now carries its stack's directory, and the report says what was
    done: the volumes compacted on SeaweedFS, MinIO's own reclaiming, or why no stack's volumes were touched."""
    from e2e3d_provider.devstack.airflow_deployment import AirflowDeployment
    from e2e3d_provider.devstack.volumes import embedded_vacuum

    if stack_info is None:
        pytest.skip("external servers configured (E2E3D_TEST_*): there is no embedded stack")
    (tmp_path / "home").mkdir()
    deployment = AirflowDeployment(stack_info, tmp_path / "home", [tmp_path], tmp_path / "data")
    deployment.build_env()
    for component in ("scheduler", "celery-worker"):  # where the maintenance DAG's tasks run
        env = deployment.component_env(component)
        assert env["E2E3D_STACK_DIR"] == stack_info.base_dir, component
        assert env["AIRFLOW__E2E3D__VOLUME_VACUUM"] == "e2e3d_provider.devstack.volumes.embedded_vacuum", component
    monkeypatch.setenv("E2E3D_STACK_DIR", deployment.component_env("scheduler")["E2E3D_STACK_DIR"])
    setting = deployment.component_env("scheduler")["AIRFLOW__E2E3D__VOLUME_VACUUM"]
    report = hygiene.vacuum_volumes(hygiene.configured_vacuum(setting, storage.endpoint_url))
    if stack_info.server == "seaweedfs":
        assert "skipped" not in report, report
        assert report["done"].startswith("compacted ") and f"of {report['volumes']} SeaweedFS volumes" in report["done"]
    else:
        assert report == {"skipped": "MinIO reclaims a deleted object's space itself: there is nothing to compact"}
    other = embedded_vacuum("http://127.0.0.1:9")()["skipped"]
    assert other.startswith("http://127.0.0.1:9 is not the embedded stack in ") and stack_info.s3_endpoint in other
    monkeypatch.setenv("E2E3D_STACK_DIR", str(tmp_path / "none"))
    assert embedded_vacuum(storage.endpoint_url)()["skipped"].startswith(
        f"no embedded stack runs in {tmp_path / 'none'} ($E2E3D_STACK_DIR)"
    )


def test_the_volume_compaction_is_a_setting_that_names_a_function() -> None:
    """The maintenance DAG imports no developer module: ``[e2e3d] volume_vacuum`` names the compaction, resolved
    when maintenance runs; empty is none, and a path that names nothing is refused saying which."""
    assert hygiene.configured_vacuum("", "http://127.0.0.1:9") is None
    assert hygiene.configured_vacuum("  ", "http://127.0.0.1:9") is None
    with pytest.raises(ValueError, match=r"gave 18 for http://127\.0\.0\.1:9, not a compaction to run"):
        hygiene.configured_vacuum("builtins.len", "http://127.0.0.1:9")  # a function, but of the wrong kind
    for bad in ("no_such_module.fn", "e2e3d_provider.devstack.volumes.no_such_fn", "nodots", "builtins.__doc__"):
        with pytest.raises(ValueError, match=r"\[e2e3d\] volume_vacuum = .* names no function"):
            hygiene.configured_vacuum(bad, "http://127.0.0.1:9")
