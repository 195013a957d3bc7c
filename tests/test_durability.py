"""Backups, the restore drill, scrub-and-repair, on real servers.

The drill destroys every bucket's contents and the ``e2e3d`` schema, so it runs on a stack of its own
(SeaweedFS + PostgreSQL started here), with the backup target a bucket beside the live ones, as
``e2e3d stack env`` sets it up. The damaged-job test uses the session's stack and results API.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from e2e3d_provider import cli
from e2e3d_provider.core.backup_catalog import COMPLETE_NAME, snapshot_key
from e2e3d_provider.core.layout import DEFAULT_BUCKETS, archive_prefix, output_prefix
from e2e3d_provider.devstack import stack
from e2e3d_provider.exceptions import StorageError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.durability import backup as backup_module
from e2e3d_provider.lifecycle.durability import restore as restore_module
from e2e3d_provider.lifecycle.durability.archive import archive_and_record
from e2e3d_provider.lifecycle.durability.backup import BackupError, BackupTarget, run_backup
from e2e3d_provider.lifecycle.durability.restore import run_restore
from e2e3d_provider.lifecycle.durability.scrub import scrub
from e2e3d_provider.lifecycle.inputs.datasets import read_dataset
from e2e3d_provider.lifecycle.inputs.ingest import ingest
from e2e3d_provider.lifecycle.locks import job_lock
from e2e3d_provider.lifecycle.results.publish import publish_run
from e2e3d_provider.lifecycle.results.published import fetch_published
from e2e3d_provider.lifecycle.results.record import record_job_run
from tests.helpers import own_stack_server, write_files

STAMP = "20261202T120000Z"
from e2e3d_provider.devstack.demo import SAMPLE_DIR as SAMPLE  # noqa: E402  (the installed package's)


@dataclass
class Drill:
    info: stack.StackInfo
    storage: StorageHook
    metadata: MetadataHook
    target: BackupTarget
    spool: Path


@pytest.fixture(scope="module")
def drill(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drill]:
    base = tmp_path_factory.mktemp("drill-stack")
    info = stack.start_stack(base, owner_pid=os.getpid(), server=own_stack_server(s3_server))
    names = {"drill_s3": info.minio_conn(), "drill_pg": info.metadata_conn(), "drill_backup": info.backup_conn()}
    for conn_id, conn in names.items():
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    try:
        storage = StorageHook("drill_s3")
        storage.bootstrap()
        metadata = MetadataHook("drill_pg")
        metadata.migrate()
        spool = tmp_path_factory.mktemp("drill-spool")
        yield Drill(info, storage, metadata, BackupTarget.from_hook(StorageHook("drill_backup")), spool)
    finally:
        for conn_id in names:
            os.environ.pop(f"AIRFLOW_CONN_{conn_id.upper()}", None)
        stack.stop_stack(base)


def publish_job(d: Drill, root: Path, job_id: str, files: dict[str, bytes] | None = None) -> dict[str, bytes]:
    files = files or {
        "mesh/model.obj": b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n" + os.urandom(64),
        "mesh/model.mtl": f"newmtl {job_id}\n".encode(),
        "texture/albedo.png": os.urandom(4096),
        "pointcloud/points.ply": os.urandom(2048),
    }
    run = root / job_id
    write_files(run, files)
    publish_run(d.storage, run, job_id, STAMP, "output", {"faces": 1})
    record_job_run(d.metadata, d.storage, job_id, STAMP, "terrain", "succeeded")
    return files


def table(metadata: MetadataHook, name: str) -> list[tuple]:
    with metadata.transaction() as cur:
        cur.execute(f"SELECT * FROM e2e3d.{name} ORDER BY 1, 2, 3")
        return cur.fetchall()


def live_objects(storage: StorageHook) -> dict[tuple[str, str], int]:
    return {
        (bucket, o.key): o.size
        for bucket in DEFAULT_BUCKETS
        for o in storage.list_objects(bucket)
        if not o.key.startswith(".work/")
    }


def destroy_everything(d: Drill) -> None:
    """Every version of every object in the four buckets, and the e2e3d schema."""
    from minio.deleteobjects import DeleteObject

    client = d.storage.client
    for bucket in DEFAULT_BUCKETS:
        versions = client.list_objects(bucket, recursive=True, include_version=True)
        doomed = [DeleteObject(o.object_name, o.version_id) for o in versions]
        assert not list(client.remove_objects(bucket, doomed))
    with d.metadata.transaction() as cur:
        cur.execute("DROP SCHEMA e2e3d CASCADE")


def test_restore_drill_brings_back_every_job_byte_for_byte_and_every_row(drill: Drill, tmp_path: Path) -> None:
    d = drill
    ingest(d.storage, SAMPLE, "terrain")
    published = {f"drill-{i}": publish_job(d, tmp_path, f"drill-{i}") for i in range(3)}
    archive_and_record(d.storage, d.metadata, "drill-0")

    first = run_backup(d.storage, d.target, d.metadata, d.spool)
    objects = live_objects(d.storage)
    assert first.objects == len(objects) and first.bytes == sum(objects.values())
    assert first.sent_objects > 0

    unchanged = run_backup(d.storage, d.target, d.metadata, d.spool)  # incremental: decided from listings
    assert (unchanged.objects, unchanged.read_objects, unchanged.sent_objects) == (first.objects, 0, 0)

    published["drill-3"] = publish_job(d, tmp_path, "drill-3")
    third = run_backup(d.storage, d.target, d.metadata, d.spool)
    new_keys = {k for k in live_objects(d.storage) if k[1].startswith("drill-3/")}
    assert third.read_objects == len(new_keys)  # only the new job's objects were read
    assert third.objects == first.objects + len(new_keys)
    recorded = {b["backup_id"]: b for b in d.metadata.backups()}
    assert recorded[third.backup_id]["status"] == "complete"
    assert recorded[third.backup_id]["objects"] == third.objects

    jobs, job_files = table(d.metadata, "jobs"), table(d.metadata, "job_files")
    before = live_objects(d.storage)
    destroy_everything(d)
    assert live_objects(d.storage) == {}

    started = time.monotonic()
    restored = run_restore(d.target, d.storage, d.metadata, d.spool)
    seconds = time.monotonic() - started
    assert restored.backup_id == third.backup_id
    assert restored.restored_objects == len(before) and restored.conflicts == []
    assert live_objects(d.storage) == before
    assert table(d.metadata, "jobs") == jobs and table(d.metadata, "job_files") == job_files
    for job_id, files in published.items():
        assert d.storage.exists("output", f"{job_id}/SUCCESS")
        fetched = fetch_published(d.storage, job_id, tmp_path / "fetched" / job_id)  # every file's sha256 checked
        assert fetched.files == len(files)
        for rel, body in files.items():
            assert (tmp_path / "fetched" / job_id / rel).read_bytes() == body
    assert d.storage.exists("archive", archive_prefix("drill-0", STAMP) + "SUCCESS")
    assert len(read_dataset(d.storage, "terrain").images) == len(list(SAMPLE.iterdir()))
    assert {b["backup_id"]: b["status"] for b in d.metadata.backups()}[third.backup_id] == "complete"
    print(
        f"\ndrill: {len(before)} objects, {sum(before.values())} bytes, {len(jobs)} jobs, {len(job_files)} job_files "
        f"rows; backup {first.seconds:.2f} s (unchanged: {unchanged.seconds:.2f} s); restore {seconds:.2f} s"
    )


def test_restore_adds_what_is_missing_and_refuses_to_replace_what_differs(drill: Drill, tmp_path: Path) -> None:
    d = drill
    files = publish_job(d, tmp_path, "drill-merge")
    run_backup(d.storage, d.target, d.metadata, d.spool)
    prefix = output_prefix("drill-merge")
    d.storage.delete_object("output", prefix + "mesh/model.mtl")
    d.storage.put_bytes("output", prefix + "texture/albedo.png", b"not the texture")
    with d.metadata.transaction() as cur:
        cur.execute("DELETE FROM e2e3d.job_files WHERE job_id = 'drill-merge' AND key LIKE '%%model.mtl'")
        cur.execute("UPDATE e2e3d.jobs SET error = 'edited' WHERE job_id = 'drill-merge'")

    merged = run_restore(d.target, d.storage, d.metadata, d.spool, job_id="drill-merge")
    assert merged.restored_objects == 1 and merged.conflicts == [f"output/{prefix}texture/albedo.png"]
    assert d.storage.get_bytes("output", prefix + "mesh/model.mtl") == files["mesh/model.mtl"]
    assert d.storage.get_bytes("output", prefix + "texture/albedo.png") == b"not the texture"  # kept
    assert merged.rows["job_files"]["restored"] == 1 and merged.rows["jobs"]["conflicts"] == 1
    assert d.metadata.get_job("drill-merge", STAMP)["error"] == "edited"

    args = ["--backup-conn-id", "drill_backup", "--minio-conn-id", "drill_s3", "--metadata-conn-id", "drill_pg"]
    assert cli.main(["restore", "--job", "drill-merge", *args]) == 1  # the CLI says so, and changes nothing

    replaced = run_restore(d.target, d.storage, d.metadata, d.spool, job_id="drill-merge", overwrite=True)
    assert replaced.replaced == [f"output/{prefix}texture/albedo.png"]
    assert d.storage.get_bytes("output", prefix + "texture/albedo.png") == files["texture/albedo.png"]
    assert d.metadata.get_job("drill-merge", STAMP)["error"] is None
    assert cli.main(["restore", "--job", "drill-merge", *args]) == 0  # nothing differs any more


def test_an_interrupted_backup_or_restore_resumes(
    drill: Drill, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = drill
    before = d.target.complete_ids()
    for i in range(3):
        publish_job(d, tmp_path, f"drill-resume-{i}")
    monkeypatch.setattr(backup_module, "BATCH_FILES", 4)

    def cut(done: int, total: int) -> None:
        raise RuntimeError(f"interrupted after {done} of {total}")

    with pytest.raises(BackupError, match=r"interrupted after 4 of .*intact"):
        run_backup(d.storage, d.target, d.metadata, d.spool, on_batch=cut)
    assert d.target.complete_ids() == before  # the failed run completed nothing and changed nothing
    failed = d.metadata.backups()[0]
    assert failed["status"] == "failed" and "interrupted" in failed["error"]
    resumed = run_backup(d.storage, d.target, d.metadata, d.spool)
    assert resumed.read_objects == 3 * 6 - 4  # the rest of the three jobs' objects; the first 4 are stored

    for i in range(3):
        d.storage.delete_prefix("output", output_prefix(f"drill-resume-{i}"), all_versions=True)
    real_batch = restore_module._restore_batch
    calls = []

    def stop_after_one(*args, **kwargs):
        if calls:
            raise RuntimeError("restore interrupted")
        calls.append(1)
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(restore_module, "BATCH_FILES", 4)
    monkeypatch.setattr(restore_module, "_restore_batch", stop_after_one)
    with pytest.raises(RuntimeError, match="restore interrupted"):
        run_restore(d.target, d.storage, d.metadata, d.spool, schema=False)
    monkeypatch.setattr(restore_module, "_restore_batch", real_batch)
    again = run_restore(d.target, d.storage, d.metadata, d.spool, schema=False)
    assert again.restored_objects == 3 * 6 - 4 and again.conflicts == []
    for i in range(3):
        fetch_published(d.storage, f"drill-resume-{i}", tmp_path / "resumed" / str(i))


def test_an_unreachable_or_full_backup_target_fails_clearly_and_keeps_the_last_backup(
    drill: Drill, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = drill
    last = d.target.complete_ids()[-1]
    port = stack.free_ports(1)[0]
    os.environ["AIRFLOW_CONN_DRILL_DEAD"] = json.dumps(
        {"conn_type": "aws", "login": "k", "password": "s", "extra": {"endpoint_url": f"http://127.0.0.1:{port}"}}
    )
    dead = BackupTarget(StorageHook("drill_dead", attempts=1))
    with pytest.raises(BackupError, match=f"127.0.0.1:{port}.*earlier backups are untouched"):
        run_backup(d.storage, dead, d.metadata, d.spool)
    assert d.metadata.backups()[0]["status"] == "failed"

    full = BackupTarget(StorageHook("drill_backup"), d.target.bucket)
    publish_job(d, tmp_path, "drill-full")

    def no_space(*args, **kwargs):
        raise StorageError("XMinioStorageFull: Storage backend has reached its minimum free drive threshold")

    monkeypatch.setattr(full.storage, "upload_objects", no_space)  # a fault: the target's disk is full
    with pytest.raises(BackupError, match=f"StorageFull.*the last complete backup \\({last}\\) is intact"):
        run_backup(d.storage, full, d.metadata, d.spool)
    assert d.target.complete_ids()[-1] == last
    d.target.catalog(d.target.snapshot(last))  # still whole: its catalog verifies against COMPLETE
    assert d.target.storage.exists(d.target.bucket, snapshot_key(last, COMPLETE_NAME))


def test_scrub_repairs_from_a_version_the_archive_or_the_backup(drill: Drill, tmp_path: Path) -> None:
    d = drill
    flipped = publish_job(d, tmp_path, "scrub-versions")
    prefix = output_prefix("scrub-versions")
    body = bytearray(flipped["texture/albedo.png"])
    body[100] ^= 0xFF
    d.storage.put_bytes("output", prefix + "texture/albedo.png", bytes(body))  # flipped bytes, same size
    d.storage.delete_object("output", prefix + "pointcloud/points.ply")  # a delete marker over it

    publish_job(d, tmp_path, "scrub-archive")
    archive_and_record(d.storage, d.metadata, "scrub-archive")
    d.storage.delete_prefix("output", output_prefix("scrub-archive") + "mesh/", all_versions=True)

    publish_job(d, tmp_path, "scrub-backup")
    run_backup(d.storage, d.target, d.metadata, d.spool)
    d.storage.delete_prefix("output", output_prefix("scrub-backup") + "texture/", all_versions=True)

    results = {job: scrub(d.storage, d.metadata, d.spool, backup=d.target, job_id=job) for job in
               ("scrub-versions", "scrub-archive", "scrub-backup")}  # fmt: skip
    found = {job: sorted((f["key"].split("/", 1)[1], f["problem"], f["repaired_from"]) for f in r.findings)
             for job, r in results.items()}  # fmt: skip
    assert found == {
        "scrub-versions": [
            ("pointcloud/points.ply", "missing", "version"),
            ("texture/albedo.png", "mismatch", "version"),
        ],
        "scrub-archive": [("mesh/model.mtl", "missing", "archive"), ("mesh/model.obj", "missing", "archive")],
        "scrub-backup": [("texture/albedo.png", "missing", "backup")],
    }
    for job in results:
        assert results[job].damaged == []
        fetch_published(d.storage, job, tmp_path / "scrubbed" / job)  # every file verifies again
    recorded = d.metadata.scrub_findings("scrub-versions")
    assert {(r["problem"], r["repaired_from"]) for r in recorded} == {("missing", "version"), ("mismatch", "version")}
    clean = scrub(d.storage, d.metadata, d.spool, job_id="scrub-versions")
    assert clean.findings == [] and clean.files == 4 and clean.bytes_read == sum(len(b) for b in flipped.values())


def test_a_rolling_scrub_reads_at_most_its_bound_and_carries_on(drill: Drill) -> None:
    d = drill
    d.metadata.set_config("scrub_cursor", None)
    seen: list[int] = []
    while True:
        r = scrub(d.storage, d.metadata, d.spool, max_bytes=1)  # one run per scrub: the bound is tiny
        seen.append(r.runs)
        if r.complete_pass:
            break
        assert r.runs == 1 and d.metadata.get_config("scrub_cursor") is not None
    assert sum(seen) == len(d.metadata.published_runs(limit=10_000))


def test_an_unrepairable_job_is_damaged_and_the_api_says_so(
    storage: StorageHook, metadata: MetadataHook, api: str, tmp_path: Path, unique_id: str
) -> None:
    from tests.helpers import as_user

    files = {"mesh/model.obj": b"v 0 0 0\n", "texture/albedo.png": os.urandom(1024)}
    write_files(tmp_path / "run", files)
    publish_run(storage, tmp_path / "run", unique_id, STAMP, "output")
    record_job_run(metadata, storage, unique_id, STAMP, "terrain", "succeeded")
    key = output_prefix(unique_id) + "texture/albedo.png"
    storage.delete_prefix(
        "output", output_prefix(unique_id) + "texture/", all_versions=True
    )  # no version, no archive, no backup holds it
    maintenance = StorageHook("minio_maintenance")

    result = scrub(maintenance, metadata, tmp_path / "spool", job_id=unique_id)
    assert result.damaged == [unique_id], result
    assert not storage.exists("output", output_prefix(unique_id) + "SUCCESS")  # no reader trusts it
    job = metadata.get_job(unique_id, STAMP)
    assert job["status"] == "damaged" and "texture/albedo.png" in job["error"]
    answer = httpx.get(f"{api}/api/v1/jobs/{unique_id}/results", headers=as_user("viewer"))
    assert answer.status_code == 409 and "is damaged" in answer.json()["detail"]

    storage.put_bytes("output", key, files["texture/albedo.png"])  # the file comes back (restored by hand)
    healed = scrub(maintenance, metadata, tmp_path / "spool", job_id=unique_id)
    assert healed.recovered == [unique_id] and healed.findings == []
    assert metadata.get_job(unique_id, STAMP)["status"] == "succeeded"
    assert httpx.get(f"{api}/api/v1/jobs/{unique_id}/results", headers=as_user("viewer")).status_code == 200
    expected = hashlib.sha256(files["texture/albedo.png"]).hexdigest()
    assert storage.read_sha256("output", key) == expected


def test_stack_env_exports_a_backup_target_that_works_out_of_the_box(drill: Drill, capsys) -> None:
    env = drill.info.env()
    conn = json.loads(env["AIRFLOW_CONN_E2E3D_BACKUP"])
    assert conn["extra"]["bucket"] == "e2e3d-backup"
    args = ["--backup-conn-id", "drill_backup", "--minio-conn-id", "drill_s3", "--metadata-conn-id", "drill_pg"]
    assert cli.main(["backup", *args, "--spool", str(drill.spool)]) == 0
    assert "complete at" in capsys.readouterr().out
    assert cli.main(["backup", "--list", "--backup-conn-id", "drill_backup"]) == 0
    assert cli.main(["scrub", *args, "--spool", str(drill.spool)]) == 0


def test_scrub_leaves_output_removed_on_purpose_and_jobs_another_task_holds(drill: Drill, tmp_path: Path) -> None:
    d = drill
    publish_job(d, tmp_path, "scrub-removed")
    archive_and_record(d.storage, d.metadata, "scrub-removed", remove_source=True)
    assert d.storage.list_keys("output", output_prefix("scrub-removed")) == []
    assert d.metadata.get_job("scrub-removed", STAMP)["output_removed_at"] is not None
    left = scrub(d.storage, d.metadata, d.spool, backup=d.target, job_id="scrub-removed")
    assert left.findings == [] and d.storage.list_keys("output", output_prefix("scrub-removed")) == []
    assert left.runs == 1 and left.files == 4  # its archive copy, which readers now get, was read instead

    run_backup(d.storage, d.target, d.metadata, d.spool)
    archived = archive_prefix("scrub-removed", STAMP) + "texture/albedo.png"
    d.storage.delete_object("archive", archived)  # the archive is not versioned: only the backup holds it now
    fixed = scrub(d.storage, d.metadata, d.spool, backup=d.target, job_id="scrub-removed")
    assert [(f["bucket"], f["key"], f["problem"], f["repaired_from"]) for f in fixed.findings] == [
        ("archive", archived, "missing", "backup")
    ]
    assert d.storage.list_keys("output", output_prefix("scrub-removed")) == []

    publish_job(d, tmp_path, "scrub-retiring")  # retention's window: markers gone, not yet recorded
    archive_and_record(d.storage, d.metadata, "scrub-retiring")
    d.storage.delete_object("output", output_prefix("scrub-retiring") + "SUCCESS")
    d.storage.delete_object("output", output_prefix("scrub-retiring") + "mesh/model.obj")
    assert scrub(d.storage, d.metadata, d.spool, job_id="scrub-retiring").findings == []
    assert not d.storage.exists("output", output_prefix("scrub-retiring") + "mesh/model.obj")

    publish_job(d, tmp_path, "scrub-busy")
    d.storage.delete_object("output", output_prefix("scrub-busy") + "mesh/model.mtl")
    with job_lock(d.metadata, "scrub-busy"):  # a publish or archive of the job is under way
        busy = scrub(d.storage, d.metadata, d.spool, job_id="scrub-busy")
    assert busy.busy == ["scrub-busy"] and busy.findings == []
    assert not d.storage.exists("output", output_prefix("scrub-busy") + "mesh/model.mtl")
    assert [f["repaired_from"] for f in scrub(d.storage, d.metadata, d.spool, job_id="scrub-busy").findings] == [
        "version"
    ]


def test_a_backup_never_takes_a_damaged_file_and_a_restore_never_vouches_for_one(drill: Drill, tmp_path: Path) -> None:
    d = drill
    files = publish_job(d, tmp_path, "backup-truncated")
    good = run_backup(d.storage, d.target, d.metadata, d.spool)
    key = output_prefix("backup-truncated") + "texture/albedo.png"
    d.storage.put_bytes("output", key, files["texture/albedo.png"][:100])  # truncated, label recomputed
    after = run_backup(d.storage, d.target, d.metadata, d.spool)
    assert after.damaged == [f"output/{key}"]
    kept = {(e.bucket, e.key): e for e in d.target.catalog(d.target.snapshot(after.backup_id))}
    assert (
        kept[("output", key)]
        == {(e.bucket, e.key): e for e in d.target.catalog(d.target.snapshot(good.backup_id))}[("output", key)]
    )

    d.storage.delete_object("output", output_prefix("backup-truncated") + "SUCCESS")  # a re-run's publish failed
    restored = run_restore(d.target, d.storage, d.metadata, d.spool, job_id="backup-truncated", schema=False)
    assert restored.conflicts == [f"output/{key}"]
    assert len(restored.withheld) == 1 and restored.withheld[0].startswith("output/backup-truncated/SUCCESS")
    assert not d.storage.exists("output", output_prefix("backup-truncated") + "SUCCESS")  # no marker over it
    run_restore(d.target, d.storage, d.metadata, d.spool, job_id="backup-truncated", schema=False, overwrite=True)
    fetch_published(d.storage, "backup-truncated", tmp_path / "whole")  # the marker came back with the bytes


def test_a_restored_damaged_job_is_trusted_again_and_hygiene_never_takes_its_files(
    drill: Drill, tmp_path: Path
) -> None:
    from datetime import timedelta

    from e2e3d_provider.lifecycle.maintenance.hygiene import stray_objects

    d = drill
    publish_job(d, tmp_path, "damaged-restored")
    run_backup(d.storage, d.target, d.metadata, d.spool)
    d.storage.delete_prefix("output", output_prefix("damaged-restored") + "texture/", all_versions=True)
    assert scrub(d.storage, d.metadata, d.spool, job_id="damaged-restored").damaged == ["damaged-restored"]
    remaining = set(d.storage.list_keys("output", output_prefix("damaged-restored")))

    report = stray_objects(d.storage, d.metadata, timedelta(0), dry_run=False)
    assert "damaged-restored/" in report["buckets"]["output"]["damaged"]
    assert set(d.storage.list_keys("output", output_prefix("damaged-restored"))) == remaining

    restored = run_restore(d.target, d.storage, d.metadata, d.spool, job_id="damaged-restored", schema=False)
    assert restored.restored_objects == 2 and restored.withheld == []  # the texture, then SUCCESS over a whole set
    healed = scrub(d.storage, d.metadata, d.spool, job_id="damaged-restored")
    assert healed.recovered == ["damaged-restored"] and healed.findings == []
    job = d.metadata.get_job("damaged-restored", STAMP)
    assert job["status"] == "succeeded" and job["error"] is None


def test_a_tampered_catalog_steers_no_restore_outside_the_projects_buckets_and_layout(
    drill: Drill, tmp_path: Path
) -> None:
    """A holder of the backup bucket's keys adds entries to the latest catalog and fixes up COMPLETE's hash:
    a restore once created a new bucket, wrote into the backup bucket itself and made a dataset manifest.
    Now the catalog is refused whole, before anything is written."""
    import dataclasses

    from e2e3d_provider.core.backup_catalog import CATALOG_NAME, CatalogEntry, decode_catalog, encode_catalog
    from e2e3d_provider.exceptions import ManifestError

    d = drill
    publish_job(d, tmp_path, "drill-tamper")
    done = run_backup(d.storage, d.target, d.metadata, d.spool)
    snapshot = d.target.snapshot(done.backup_id)
    entries = d.target.catalog(snapshot)
    body = entries[0]
    planted = [
        dataclasses.replace(body, bucket="stolen-bucket", key="loot/a.bin"),
        dataclasses.replace(body, bucket=d.target.bucket, key="blobs/00/planted"),
        dataclasses.replace(body, bucket="input", key="../input/x"),
        dataclasses.replace(body, bucket="output", key=".e2e3d-probe/x"),
    ]
    for bad in planted:
        catalog = encode_catalog([*entries, bad])
        with pytest.raises(ManifestError, match="refused"):
            decode_catalog(catalog)
    catalog = encode_catalog(
        [*entries, *planted[:2], CatalogEntry("input", "evil/dataset.json", body.size, body.sha256)]
    )
    d.target.storage.put_bytes(d.target.bucket, snapshot_key(done.backup_id, CATALOG_NAME), catalog)
    fixed = dataclasses.replace(snapshot, catalog_sha256=hashlib.sha256(catalog).hexdigest())
    d.target.storage.put_bytes(d.target.bucket, snapshot_key(done.backup_id, COMPLETE_NAME), fixed.to_json())
    with pytest.raises(ManifestError, match="outside the project's buckets"):
        run_restore(d.target, d.storage, d.metadata, d.spool, backup_id=done.backup_id, schema=False)
    assert not d.storage.bucket_exists("stolen-bucket")
    assert not d.target.storage.exists(d.target.bucket, "blobs/00/planted")
    assert not d.storage.exists("input", "evil/dataset.json")


@pytest.mark.parametrize(
    "marker",
    [
        {"manifest_sha256": "from the published marker"},  # no stamp at all
        {"stamp": "20200101T000000Z", "manifest_sha256": "from the published marker"},  # a run PostgreSQL never had
        {"stamp": STAMP},  # this run, but vouching for no manifest
    ],
    ids=["no stamp", "another stamp", "no manifest"],
)
def test_scrub_reports_a_success_that_names_no_or_another_run_and_puts_the_runs_own_back(
    storage: StorageHook, metadata: MetadataHook, tmp_path: Path, unique_id: str, marker: dict
) -> None:
    """Issue 28 (8): a run whose SUCCESS names no stamp or another one was skipped in silence, as if a newer
    run owned the output (and one naming no manifest stopped the whole scrub with a KeyError)."""
    write_files(tmp_path / "run", {"mesh/model.obj": b"v 0 0 0\n", "texture/albedo.png": os.urandom(512)})
    publish_run(storage, tmp_path / "run", unique_id, STAMP, "output")
    record_job_run(metadata, storage, unique_id, STAMP, "terrain", "succeeded")
    key = output_prefix(unique_id) + "SUCCESS"
    published = storage.get_bytes("output", key)
    body = {"job_id": unique_id, **marker}
    if body.get("manifest_sha256"):
        body["manifest_sha256"] = json.loads(published)["manifest_sha256"]
    StorageHook("minio_worker").put_bytes("output", key, json.dumps(body).encode())  # a worker's keys suffice

    result = scrub(StorageHook("minio_maintenance"), metadata, tmp_path / "spool", job_id=unique_id)
    assert [(f["key"], f["problem"]) for f in result.findings] == [(key, "mismatch")], result
    assert result.damaged == [] and result.errors == [] and result.runs == 1
    assert storage.get_bytes("output", key) == published  # the run's own marker, from an earlier version
    recorded = metadata.scrub_findings(unique_id)
    assert [(r["key"], r["problem"]) for r in recorded] == [(key, "mismatch")]
    assert "SUCCESS names" in recorded[0]["detail"]


def test_scrub_still_leaves_a_run_whose_output_a_newer_run_owns(
    storage: StorageHook, metadata: MetadataHook, tmp_path: Path, unique_id: str
) -> None:
    """The one marker naming another run that is no finding: a newer run of the job, known to PostgreSQL."""
    newer = "20261203T120000Z"
    for stamp in (STAMP, newer):
        write_files(tmp_path / stamp, {"mesh/model.obj": stamp.encode()})
        publish_run(storage, tmp_path / stamp, unique_id, stamp, "output")
        record_job_run(metadata, storage, unique_id, stamp, "terrain", "succeeded")
    result = scrub(StorageHook("minio_maintenance"), metadata, tmp_path / "spool", job_id=unique_id)
    assert result.findings == [] and result.runs == 1 and result.damaged == []


def test_scrub_and_restore_dry_runs_change_nothing(drill: Drill, tmp_path: Path, capsys) -> None:
    """``--dry-run`` reads and reports what a scrub would repair, or a restore bring back, and writes no object,
    version, row, finding or cursor; the real scrub afterwards is the control (it changes what the dry run left)."""
    d = drill
    files = publish_job(d, tmp_path, "dry-runs")
    run_backup(d.storage, d.target, d.metadata, d.spool)
    prefix = output_prefix("dry-runs")
    body = bytearray(files["texture/albedo.png"])
    body[7] ^= 0xFF
    d.storage.put_bytes("output", prefix + "texture/albedo.png", bytes(body))  # other bytes, same size
    d.storage.delete_object("output", prefix + "mesh/model.mtl")  # a delete marker over it

    def state() -> tuple:
        listed = d.storage.client.list_objects("output", prefix=prefix, recursive=True, include_version=True)
        versions = sorted((o.object_name, o.version_id, o.is_delete_marker) for o in listed)
        rows = [table(d.metadata, name) for name in ("jobs", "job_files", "scrub_findings", "usage", "config")]
        return versions, rows

    args = ["--backup-conn-id", "drill_backup", "--minio-conn-id", "drill_s3", "--metadata-conn-id", "drill_pg"]
    args += ["--spool", str(d.spool)]
    before = state()
    capsys.readouterr()
    assert cli.main(["scrub", "--dry-run", "--json", "--job", "dry-runs", *args]) == 0
    report = json.loads(capsys.readouterr().out)
    found = sorted((f["key"].split("/", 1)[1], f["problem"], f["repairable_from"]) for f in report["findings"])
    assert found == [("mesh/model.mtl", "missing", "version"), ("texture/albedo.png", "mismatch", "version")]
    assert report["repaired"] == 0 and report["damaged"] == [] and report["dry_run"] is True
    assert state() == before

    assert cli.main(["restore", "--dry-run", "--json", "--job", "dry-runs", *args]) == 1  # albedo.png differs
    plan = json.loads(capsys.readouterr().out)
    assert plan["restored_objects"] == 1 and plan["conflicts"] == [f"output/{prefix}texture/albedo.png"]
    assert state() == before

    assert cli.main(["scrub", "--job", "dry-runs", *args]) == 0  # the control: a real scrub repairs both
    assert "2 repaired" in capsys.readouterr().out
    assert state() != before
