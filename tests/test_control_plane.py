"""The maintenance control plane at scale, on the session's real S3 server and PostgreSQL: retention
that sees every eligible job, archiving that keeps up, statistics that never list in a request."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from e2e3d_provider.core.layout import BUCKET_ARCHIVE, BUCKET_OUTPUT, SUCCESS_NAME, archive_prefix
from e2e3d_provider.devstack.bulk_jobs import BulkJob, load_jobs
from e2e3d_provider.exceptions import StorageError
from e2e3d_provider.hooks.metadata import SCHEMA, MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.durability.retention import apply_retention

STAMP = "20200101T000000Z"
LONG_AGO = datetime(2020, 6, 1, tzinfo=UTC)
#: retention runs "now" in 2021, so the session's other (2026) jobs are never past its cutoff
NOW = datetime(2021, 1, 1, tzinfo=UTC)


@pytest.fixture
def tag(unique_id: str, metadata: MetadataHook, storage: StorageHook) -> Iterator[str]:
    """A prefix for this test's job ids; its rows and objects are removed afterwards, so the session's
    other maintenance tests never meet them."""
    yield unique_id
    with metadata.transaction() as cur:
        cur.execute(f"DELETE FROM {SCHEMA}.jobs WHERE job_id LIKE %s", (unique_id + "%",))
    for bucket in (BUCKET_OUTPUT, BUCKET_ARCHIVE):
        keys = [key for key in storage.list_keys(bucket) if key.startswith(unique_id)]
        storage.delete_keys(bucket, keys)


@pytest.mark.slow
def test_retention_removes_every_eligible_job_in_one_run_and_nothing_newer(
    storage: StorageHook, metadata: MetadataHook, tmp_path: Path, tag: str
) -> None:
    """2,500 archived jobs: 1,500 finished past the cutoff, older than the other 1,000. One run removes
    the 1,500 from ``output`` (their archive copies stay) and leaves the 1,000; a second run looks at
    none of them again. (A walk of the newest 1,000 archived jobs saw only the 1,000 and removed none.)"""
    old = [
        BulkJob(f"{tag}-old{i:04d}", STAMP, "archived", LONG_AGO + timedelta(minutes=i), archived=True)
        for i in range(1500)
    ]
    new = [BulkJob(f"{tag}-new{i:04d}", STAMP, "archived", NOW - timedelta(days=5, minutes=i)) for i in range(1000)]
    load_jobs(storage, metadata, old + new, files=("mesh/model.obj",))

    result = apply_retention(storage, metadata, 30, now=NOW)
    assert (result["removed"], result["waiting"], result["complete"]) == (1500, 0, True)
    assert result["objects_deleted"] == 1500 * 3  # model.obj, metadata.json, SUCCESS
    left = {key.split("/", 1)[0] for key in storage.list_keys(BUCKET_OUTPUT) if key.startswith(tag)}
    assert left == {job.job_id for job in new}
    assert all(storage.exists(BUCKET_ARCHIVE, archive_prefix(j.job_id, STAMP) + SUCCESS_NAME) for j in old[::100])
    with metadata.transaction() as cur:
        cur.execute(
            f"SELECT count(*) FROM {SCHEMA}.jobs WHERE job_id LIKE %s AND output_removed_at IS NOT NULL", (tag + "%",)
        )
        assert cur.fetchone()[0] == 1500

    again = apply_retention(storage, metadata, 30, now=NOW)
    assert (again["removed"], again["already_gone"], again["waiting"]) == (0, 0, 0)


def test_retention_leaves_the_output_of_a_newer_run_of_the_job(
    storage: StorageHook, metadata: MetadataHook, tmp_path: Path, tag: str
) -> None:
    """An old archived run of a job whose output now holds a newer run: retention records the old run's
    output as gone and deletes nothing (it used to empty ``<job_id>/``, the newer run's results)."""
    job = f"{tag}-twice"
    load_jobs(storage, metadata, [BulkJob(job, "20200601T000000Z", "succeeded", NOW)])
    with metadata.transaction() as cur:  # the older run, archived long ago (its archive copy exists)
        cur.execute(
            f"INSERT INTO {SCHEMA}.jobs (job_id, stamp, dataset, status, finished_at) VALUES (%s, %s, 'bulk', "
            "'archived', %s)",
            (job, STAMP, LONG_AGO),
        )
    storage.put_bytes(BUCKET_ARCHIVE, archive_prefix(job, STAMP) + SUCCESS_NAME, b"{}")
    before = sorted(storage.list_keys(BUCKET_OUTPUT, job + "/"))

    result = apply_retention(storage, metadata, 30, now=NOW)
    assert (result["removed"], result["already_gone"]) == (0, 1)
    assert sorted(storage.list_keys(BUCKET_OUTPUT, job + "/")) == before  # the newer run's results are intact
    assert metadata.get_job(job, STAMP)["output_removed_at"] is not None


def test_the_archive_sweep_archives_every_succeeded_job_on_one_connection_with_twelve_requests_each(
    storage: StorageHook, metadata: MetadataHook, tmp_path: Path, tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """120 succeeded jobs over several pages: every one archived and verified, recorded on one PostgreSQL
    connection; per job two GETs, one HEAD of the archive copy's SUCCESS (a copy that has one is never written
    again), a copy per file (no HEAD first), one listing and two PUTs, and one listing of the copy whose
    totals are stored with the job's record (the kept usage figures)."""
    from e2e3d_provider.lifecycle.durability.archive import archive_completed
    from e2e3d_provider.lifecycle.results.published import read_published_manifest

    jobs = [BulkJob(f"{tag}-a{i:03d}", STAMP, "succeeded", LONG_AGO + timedelta(seconds=i)) for i in range(120)]
    load_jobs(storage, metadata, jobs)
    with metadata.transaction() as cur:  # the session's other succeeded jobs are not this test's to count
        cur.execute(
            f"UPDATE {SCHEMA}.jobs SET status = 'failed' WHERE status = 'succeeded' AND job_id NOT LIKE %s",
            (tag + "%",),
        )

    connections, requests = [], []
    real_connect = MetadataHook._connect
    monkeypatch.setattr(MetadataHook, "_connect", lambda self: connections.append(1) or real_connect(self))
    real_urlopen = storage.client._http.urlopen

    def counted(method: str, url: str, *args: object, **kwargs: object):
        if tag in url:  # this test's jobs (the sweep also meets the session's other succeeded jobs)
            requests.append(method)
        return real_urlopen(method, url, *args, **kwargs)

    monkeypatch.setattr(storage.client._http, "urlopen", counted)
    result = archive_completed(storage, metadata, page_size=50)
    monkeypatch.undo()

    assert result["archived"] >= 120 and not result["damaged"] and result["complete"]
    assert all(metadata.get_job(job.job_id, STAMP)["status"] == "archived" for job in jobs)
    assert len(connections) == 1
    files = 5
    assert len(requests) == 120 * (2 + 1 + files + 1 + 2 + 1), {m: requests.count(m) for m in set(requests)}
    kept = metadata.usage_rows(BUCKET_ARCHIVE, units=[f"{job.job_id}/" for job in jobs])
    assert len(kept) == 120 and all(row["objects"] == files + 2 for row in kept.values())  # + manifest, SUCCESS
    assert requests.count("HEAD") == 120  # the target's SUCCESS only: never one per file
    for job in jobs[::17]:
        row = metadata.get_job(job.job_id, STAMP)
        assert row["status"] == "archived" and row["archive_key"] == "archive/" + archive_prefix(job.job_id, STAMP)
        manifest = read_published_manifest(storage, BUCKET_ARCHIVE, job.job_id, archive_prefix(job.job_id, STAMP))
        assert len(manifest.files) == files


def marked_removed(metadata: MetadataHook, tag: str) -> set[tuple[str, str]]:
    """The runs of this test recorded as having no output any more."""
    with metadata.transaction() as cur:
        cur.execute(
            f"SELECT job_id, stamp FROM {SCHEMA}.jobs WHERE job_id LIKE %s AND output_removed_at IS NOT NULL",
            (tag + "%",),
        )
        return set(cur.fetchall())


def versions_of(storage: StorageHook, job_id: str) -> set[tuple[str, str | None, bool]]:
    """Every stored version and delete marker of ``output/<job_id>/`` by the minio client's own listing."""
    listed = storage.client.list_objects(BUCKET_OUTPUT, prefix=job_id + "/", recursive=True, include_version=True)
    return {(o.object_name, o.version_id, bool(o.is_delete_marker)) for o in listed}


def test_retention_empties_every_eligible_unit_of_all_its_versions_and_leaves_the_rest(
    storage: StorageHook, metadata: MetadataHook, tag: str
) -> None:
    """300 eligible jobs, a third published twice (noncurrent versions), some with delete markers, beside
    jobs retention must leave: recent, not archived, with a newer run, archive copy missing, a marker of a
    run the database does not know. Every eligible job's output loses every version and delete marker, its
    row is marked and its usage row is gone; the others keep every version (and their usage rows)."""
    eligible = [
        BulkJob(f"{tag}-e{i:03d}", STAMP, "archived", LONG_AGO + timedelta(seconds=i), archived=True)
        for i in range(300)
    ]
    others = {
        "recent": BulkJob(f"{tag}-recent", STAMP, "archived", NOW - timedelta(days=2), archived=True),
        "unarchived": BulkJob(f"{tag}-unarchived", STAMP, "succeeded", LONG_AGO),
        "superseded": BulkJob(f"{tag}-superseded", STAMP, "archived", LONG_AGO, archived=True),
        "no-archive": BulkJob(f"{tag}-noarchive", STAMP, "archived", LONG_AGO),  # its archive copy never came
        "foreign": BulkJob(f"{tag}-foreign", STAMP, "archived", LONG_AGO, archived=True),
    }
    load_jobs(storage, metadata, eligible + list(others.values()))
    load_jobs(storage, metadata, [*eligible[::3], others["foreign"]])  # republished: a second version of each
    storage.delete_keys(BUCKET_OUTPUT, [f"{job.job_id}/logs/run.log" for job in eligible[1::7]])  # delete markers
    newer = others["superseded"].job_id
    load_jobs(storage, metadata, [BulkJob(newer, "20200701T000000Z", "succeeded", NOW)])  # owns its output now
    foreign = others["foreign"].job_id
    unknown_run = json.dumps({"job_id": foreign, "stamp": "20200901T000000Z", "manifest_sha256": "0" * 64})
    storage.put_bytes(BUCKET_OUTPUT, f"{foreign}/SUCCESS", unknown_run.encode())  # a run the database never saw
    units = [job.job_id + "/" for job in eligible + list(others.values())]
    metadata.record_usage(storage.count_units(BUCKET_OUTPUT, units))
    assert all(versions_of(storage, job.job_id) for job in eligible)
    assert sum(len(versions_of(storage, job.job_id)) for job in eligible[:3]) > 3 * 7  # several versions each
    kept = {name: versions_of(storage, job.job_id) for name, job in others.items()}

    started = time.perf_counter()
    result = apply_retention(storage, metadata, 30, now=NOW, page_size=128)
    seconds = time.perf_counter() - started
    print(f"\nretention: {result['removed']} jobs in {seconds:.2f}s = {result['removed'] / seconds:.0f} jobs/s")

    assert [job.job_id for job in eligible if versions_of(storage, job.job_id)] == []
    assert {name: versions_of(storage, job.job_id) for name, job in others.items()} == kept
    removed = marked_removed(metadata, tag)
    gone = {(others[name].job_id, STAMP) for name in ("superseded", "foreign")}  # not theirs: recorded gone
    assert removed == {(job.job_id, STAMP) for job in eligible} | gone
    rows = metadata.usage_rows(BUCKET_OUTPUT, units=units)
    assert [unit for unit in rows if unit[:-1] in {job.job_id for job in eligible}] == []
    assert set(rows) == {job.job_id + "/" for job in others.values()}
    assert not storage.take_touched().get(BUCKET_OUTPUT, set()) & set(units)  # no recount owed


def test_a_job_whose_versions_the_server_refused_is_recounted_and_retried(
    storage: StorageHook, metadata: MetadataHook, tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server refuses one version of one job (a faked refusal in the answer of the multi-object delete):
    that job is not recorded removed (the next run tries again), its unit's usage is a fresh count of what
    is left, no recount is owed for it; the other jobs go as ever, and the run ends with an error naming it."""
    jobs = [BulkJob(f"{tag}-f{i}", STAMP, "archived", LONG_AGO + timedelta(seconds=i), archived=True) for i in range(6)]
    load_jobs(storage, metadata, jobs)
    stuck = jobs[2].job_id
    real = StorageHook.delete_versions

    def refusing(self: StorageHook, bucket: str, versions: list, **kwargs: object) -> list:
        kept = [v for v in versions if v[0] == f"{stuck}/mesh/model.obj"]
        return [(key, version, "AccessDenied") for key, version in kept] + real(
            self, bucket, [v for v in versions if v not in kept], **kwargs
        )

    monkeypatch.setattr(StorageHook, "delete_versions", refusing)
    with pytest.raises(StorageError, match=stuck):
        apply_retention(storage, metadata, 30, now=NOW)
    monkeypatch.undo()

    assert marked_removed(metadata, tag) == {(job.job_id, STAMP) for job in jobs if job.job_id != stuck}
    assert [key for key, _, marker in versions_of(storage, stuck) if not marker] == [f"{stuck}/mesh/model.obj"]
    row = metadata.usage_rows(BUCKET_OUTPUT, units=[stuck + "/"])[stuck + "/"]
    assert (row["objects"], row["versions"]) == (1, 1)
    assert stuck + "/" not in storage.take_touched().get(BUCKET_OUTPUT, set())

    again = apply_retention(storage, metadata, 30, now=NOW)
    assert again["removed"] == 1 and versions_of(storage, stuck) == set()
    assert metadata.usage_rows(BUCKET_OUTPUT, units=[stuck + "/"]) == {}


@pytest.mark.parametrize("usage", ["computed", "counted"])
def test_the_bulk_loader_keeps_the_usage_of_every_unit_it_wrote(
    storage: StorageHook, metadata: MetadataHook, tag: str, usage: str
) -> None:
    """Loaded jobs start with exact kept figures, as published ones do: each job's unit in ``output`` (and in
    ``archive`` for an archived one) holds what a listing of it finds, whether the loader added up what it
    wrote or counted each unit afterwards."""
    jobs = [BulkJob(f"{tag}-u{i}", STAMP, "archived", LONG_AGO, archived=bool(i % 2)) for i in range(3)]
    load_jobs(storage, metadata, jobs, files=("mesh/model.obj", "logs/run.log"), file_size=100, usage=usage)

    for bucket, loaded in ((BUCKET_OUTPUT, jobs), (BUCKET_ARCHIVE, [job for job in jobs if job.archived])):
        units = [f"{job.job_id}/" for job in loaded]
        kept = {unit: {k: v for k, v in row.items() if k != "counted_at"} for unit, row in
                metadata.usage_rows(bucket, units=units).items()}  # fmt: skip
        assert kept == storage.count_units(bucket, units).units[bucket], bucket
        assert all(totals["objects"] == 4 for totals in kept.values())  # 2 files, manifest, SUCCESS
    with metadata.transaction() as cur:  # the session's figures keep no unit of the removed jobs
        cur.execute(f"DELETE FROM {SCHEMA}.usage WHERE unit LIKE %s", (tag + "%",))
