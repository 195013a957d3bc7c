"""Storage figures kept as the provider writes (issue 32): every write path stores the fresh totals of the
units it changed, so after a mixed workload the kept figures equal a full listing of every bucket, to the
object and the byte, with no count of a bucket in between.

The workload runs on a stack of its own (the comparison covers whole buckets, which the session's stack
shares with every other test), once per S3 server lane.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from e2e3d_provider import cli
from e2e3d_provider.core.layout import DEFAULT_BUCKETS, output_prefix
from e2e3d_provider.core.listing import COUNT_FIELDS, Version
from e2e3d_provider.core.usage import UnitListing, UsageCounts, unit_of
from e2e3d_provider.devstack import stack
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.durability.archive import archive_and_record
from e2e3d_provider.lifecycle.durability.backup import BackupTarget, run_backup
from e2e3d_provider.lifecycle.durability.restore import run_restore
from e2e3d_provider.lifecycle.durability.retention import apply_retention
from e2e3d_provider.lifecycle.durability.scrub import scrub
from e2e3d_provider.lifecycle.maintenance.hygiene import stray_objects
from e2e3d_provider.lifecycle.results.publish import publish_job
from e2e3d_provider.lifecycle.results.record import record_job_run
from tests.helpers import make_dataset, own_stack_server, write_files

STAMPS = ("20261201T100000Z", "20261202T100000Z")


@pytest.mark.parametrize(
    ("key", "unit"),
    [
        ("job-1/mesh/model.obj", "job-1/"),
        ("job-1/SUCCESS", "job-1/"),
        ("job-1/job-1_20261201T100000Z/metadata.json", "job-1/"),
        (".cas/sha256/ab/abcdef", ".cas/sha256/ab/"),
        (".work/job-1/job-1_20261201T100000Z/handoff.json", ".work/job-1/"),
        (".e2e3d-probe/token", ".e2e3d-probe/token"),
        ("loose", "loose"),
    ],
)
def test_a_key_is_counted_in_the_set_the_provider_writes_it_with(key: str, unit: str) -> None:
    assert unit_of(key) == unit


def version(key: str, size: int, latest: bool = True, marker: bool = False, vid: str | None = "v1") -> Version:
    return Version(key, vid, None if marker else "e", size, latest, marker)


def test_a_publish_derives_its_jobs_totals_from_its_listing_and_the_writes_after_it() -> None:
    """Versioned: a delete leaves the old version noncurrent under a delete marker; a put over a key (here a
    SUCCESS under step 1's delete marker) makes the older entries noncurrent. Never versioned: a delete
    removes, a put replaces."""
    listed = [
        version("j/SUCCESS", 0, marker=True),
        version("j/SUCCESS", 90, latest=False),
        version("j/a.obj", 10),
        version("j/old.ply", 30),
        version("j/old.ply", 20, latest=False),
        version("j/manifest.json", 50),
    ]
    put = [("j/manifest.json", 60), ("j/SUCCESS", 95)]
    counts = UnitListing("output", "j/", True, listed).after(deleted=["j/old.ply"], put=put)
    assert counts is not None and counts.units == {
        "output": {"j/": {"objects": 3, "bytes": 165, "versions": 7, "stored_bytes": 355, "delete_markers": 2}}
    }
    plain = [version("j/a.obj", 10, vid=None), version("j/old.ply", 30, vid=None), version("j/SUCCESS", 9, vid=None)]
    counts = UnitListing("output", "j/", False, plain).after(deleted=["j/old.ply"], put=[("j/SUCCESS", 95)])
    assert counts is not None and counts.rows() == [("output", "j/", 2, 105, 2, 105, 0)]


def test_a_written_key_with_a_null_version_or_outside_the_unit_is_left_to_a_listing() -> None:
    """What a write does to a ``null`` version (versioning suspended, or an object from before it) is the
    server's to say; a key outside the unit is not the listing's to count."""
    listed = [version("j/a.obj", 10, vid="null"), version("j/b.obj", 10)]
    unit = UnitListing("output", "j/", True, listed)
    assert unit.after(put=[("j/a.obj", 5)]) is None
    assert unit.after(put=[("k/a.obj", 5)]) is None
    assert unit.after(put=[("j/b.obj", 5)]) is not None


def test_derived_totals_stand_in_for_a_recount_until_the_unit_is_written_again() -> None:
    """What a writer derived (note_counted) is what the next recount stores for the unit, with no listing;
    a later write to the unit makes it a guess again, so the unit goes back to being listed."""
    derived = UsageCounts()
    derived.add("output", "j/", {"objects": 2, "bytes": 20, "versions": 2, "stored_bytes": 20})
    writer = StorageHook()  # no server needed: nothing here lists
    writer._touch("output", ["j/a.obj", "k/b.obj"])
    writer.note_counted(derived)
    assert writer.take_touched() == {"output": {"k/"}}
    writer.note_counted(derived)
    assert writer.recount_touched().rows() == [("output", "j/", 2, 20, 2, 20, 0)]
    writer.note_counted(derived)
    writer._touch("output", ["j/c.obj"])
    assert writer.take_touched() == {"output": {"j/"}}
    assert not writer.recount_touched()


def test_counts_merge_at_the_earlier_instant_and_say_which_units_are_empty() -> None:
    early, late = UsageCounts(counted_at=datetime(2026, 1, 1, tzinfo=UTC)), UsageCounts()
    early.add("output", "a/", {"objects": 2, "bytes": 10, "versions": 3, "stored_bytes": 15})
    late.add("archive", "a/", {})
    merged = early.merge(late)
    assert merged.counted_at == early.counted_at and len(merged) == 2
    assert merged.rows() == [("archive", "a/", 0, 0, 0, 0, 0), ("output", "a/", 2, 10, 3, 15, 0)]


@dataclass
class Site:
    storage: StorageHook
    metadata: MetadataHook
    target: BackupTarget
    conns: dict[str, str]


@pytest.fixture(scope="module")
def site(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("usage-stack")
    info = stack.start_stack(base, owner_pid=os.getpid(), server=own_stack_server(s3_server))
    names = {"usage_s3": info.minio_conn(), "usage_pg": info.metadata_conn(), "usage_backup": info.backup_conn()}
    for conn_id, conn in names.items():
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    try:
        storage = StorageHook("usage_s3")
        storage.bootstrap()
        metadata = MetadataHook("usage_pg")
        metadata.migrate()
        target = BackupTarget.from_hook(StorageHook("usage_backup"))
        yield Site(storage, metadata, target, {"s3": "usage_s3", "pg": "usage_pg"})
    finally:
        for conn_id in names:
            os.environ.pop(f"AIRFLOW_CONN_{conn_id.upper()}", None)
        stack.stop_stack(base)


def listed(storage: StorageHook, bucket: str) -> dict[str, int]:
    """What ``bucket`` holds by a listing of every version (the minio client's, not the provider's counter)."""
    totals = dict.fromkeys(COUNT_FIELDS, 0)
    for entry in storage.client.list_objects(bucket, recursive=True, include_version=True):
        if entry.is_delete_marker:
            totals["delete_markers"] += 1
            continue
        totals["versions"] += 1
        totals["stored_bytes"] += entry.size or 0
        if entry.is_latest in (True, "true", "True"):
            totals["objects"] += 1
            totals["bytes"] += entry.size or 0
    return totals


def kept(metadata: MetadataHook) -> dict[str, dict[str, int]]:
    return {row["bucket"]: {name: row[name] for name in COUNT_FIELDS} for row in metadata.bucket_usage()}


def hook() -> StorageHook:
    """A storage hook of its own for each step, as each task or command has: a step that forgot to store
    the units it changed cannot lean on a later step's recount."""
    return StorageHook("usage_s3")


class Recounts(StorageHook):
    """A storage hook that notes which units it counted by listing (a spy: it lists for real)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.listed_units: list[tuple[str, str]] = []

    def count_units(self, bucket: str, units: Iterable[str]) -> UsageCounts:
        units = list(units)
        self.listed_units += [(bucket, unit) for unit in units]
        return super().count_units(bucket, units)


def publish(site: Site, root: Path, job_id: str, stamp: str, files: dict[str, bytes] | None = None) -> Recounts:
    """Publish a run of ``job_id`` (three result files unless ``files``); returns the hook that did."""
    run = root / f"{job_id}-{stamp}"
    write_files(
        run,
        files
        or {
            "mesh/model.obj": b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n" + os.urandom(300),
            "texture/albedo.png": os.urandom(2048),
            "pointcloud/points.ply": os.urandom(1024),
        },
    )
    site.metadata.record_job(job_id, stamp, "usage-set", "running")
    publisher = Recounts("usage_s3")
    publish_job(publisher, site.metadata, job_id, stamp, run_dir=run)
    record_job_run(site.metadata, hook(), job_id, stamp, "usage-set", "succeeded")
    return publisher


def test_after_a_mixed_workload_the_kept_figures_equal_a_listing_to_the_object(site: Site, tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_dataset(images, [1, 2, 3])
    args = ["ingest", str(images), "--dataset", "usage-set", "--minio-conn-id", "usage_s3"]
    assert cli.main([*args, "--metadata-conn-id", "usage_pg"]) == 0

    for job in ("use-a", "use-b", "use-c", "use-d"):
        publish(site, tmp_path, job, STAMPS[0])
    publish(site, tmp_path, "use-a", STAMPS[1])  # a second run over the first: noncurrent versions
    # a second run with other files: the first's stale objects deleted (delete markers), counted by
    # publish from its own listing and writes, with no listing of its own after them
    again = publish(site, tmp_path, "use-d", STAMPS[1], {"mesh/model.obj": b"v 0 0 0\n" * 40, "extra.txt": b"e"})
    assert ("output", "use-d/") not in again.listed_units
    for job in ("use-a", "use-b"):
        archive_and_record(hook(), site.metadata, job)
    removed = apply_retention(hook(), site.metadata, 0, now=datetime.now(UTC) + timedelta(days=1))
    assert removed["removed"] == 2

    # damage from outside the provider (another client), then the scrub repairs it from a version
    prefix = output_prefix("use-c")
    site.storage.client.put_object("output", prefix + "texture/albedo.png", io.BytesIO(b"x" * 2048), 2048)
    found = scrub(hook(), site.metadata, tmp_path / "spool")
    assert [(f["problem"], f["repaired_from"]) for f in found.findings] == [("mismatch", "version")]

    # a stray no manifest names, removed by hygiene
    site.storage.client.put_object("output", prefix + "stray.bin", io.BytesIO(b"s" * 10), 10)
    swept = stray_objects(hook(), site.metadata, timedelta(0), dry_run=False)
    assert swept["deleted"] == 1

    # a backup, a loss outside the provider, a restore of the job
    run_backup(hook(), site.target, site.metadata, tmp_path / "spool")
    site.storage.client.remove_object("output", prefix + "mesh/model.obj")
    restored = run_restore(site.target, hook(), site.metadata, tmp_path / "spool", job_id="use-c", schema=False)
    assert restored.restored_objects == 1

    figures = kept(site.metadata)
    for bucket in DEFAULT_BUCKETS:
        assert figures.get(bucket, dict.fromkeys(COUNT_FIELDS, 0)) == listed(site.storage, bucket), bucket
    with site.metadata.transaction() as cur:  # the trigger's sums are the units' sums
        cur.execute(
            "SELECT bucket, sum(objects), sum(bytes), sum(versions), sum(stored_bytes), sum(delete_markers), count(*) "
            "FROM e2e3d.usage GROUP BY bucket ORDER BY bucket"
        )
        sums = {row[0]: [int(v) for v in row[1:]] for row in cur.fetchall()}
    units = {
        row["bucket"]: [*(row[name] for name in COUNT_FIELDS), row["units"]] for row in site.metadata.bucket_usage()
    }
    assert {b: v for b, v in units.items() if any(v)} == sums


def test_a_count_older_than_the_stored_one_never_overwrites_it(site: Site) -> None:
    newer, older = UsageCounts(), UsageCounts(counted_at=datetime.now(UTC) - timedelta(minutes=5))
    newer.add("models", "stale-test/", {"objects": 3, "bytes": 30, "versions": 3, "stored_bytes": 30})
    older.add("models", "stale-test/", {"objects": 1, "bytes": 10, "versions": 1, "stored_bytes": 10})
    site.metadata.record_usage(newer)
    site.metadata.record_usage(older)
    assert site.metadata.usage_rows("models", units=["stale-test/"])["stale-test/"]["objects"] == 3
    site.metadata.record_usage(UsageCounts(units={"models": {"stale-test/": dict.fromkeys(COUNT_FIELDS, 0)}}))
    assert site.metadata.usage_rows("models", units=["stale-test/"]) == {}


def test_a_key_counted_as_its_own_unit_is_counted_alone_on_every_server(storage: StorageHook, bucket: str) -> None:
    """A probe or a loose top-level key is its own unit: its count lists below the key itself (MinIO refuses a
    listing whose marker lies outside its prefix, NotImplemented) and leaves out longer keys it prefixes."""
    writer = StorageHook()
    writer.put_bytes(bucket, ".e2e3d-probe/abc", b"12")
    writer.put_bytes(bucket, "loose", b"123")
    writer.put_bytes(bucket, "loosely", b"12345")
    counts = writer.recount_touched()
    assert counts.units[bucket][".e2e3d-probe/abc"]["bytes"] == 2
    assert counts.units[bucket]["loose"] == {
        "objects": 1,
        "bytes": 3,
        "versions": 1,
        "stored_bytes": 3,
        "delete_markers": 0,
    }
    assert counts.units[bucket]["loosely"]["bytes"] == 5
