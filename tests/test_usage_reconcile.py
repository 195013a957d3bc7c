"""The usage reconciliation (issue 32): the kept figures compared with the server now and then, the drift
found recorded and corrected, so that after it ``bucket_usage`` equals a full listing of every bucket.

Writes outside the provider (the minio client's raw put and remove, which note nothing) make the drift.
A stack of its own per server lane: the comparison covers whole buckets. Its MinIO runs the scanner at
``MINIO_SCANNER_SPEED=fastest`` (a cycle a second), so the usage report follows within seconds.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from e2e3d_provider.core.layout import BUCKET_ARCHIVE, BUCKET_INPUT, BUCKET_OUTPUT, DEFAULT_BUCKETS
from e2e3d_provider.core.listing import COUNT_FIELDS
from e2e3d_provider.core.roles import minio_policy
from e2e3d_provider.core.usage import UNATTRIBUTED, UsageCounts
from e2e3d_provider.devstack import stack
from e2e3d_provider.exceptions import StorageAuthError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.maintenance import steps
from e2e3d_provider.lifecycle.maintenance.dashboard import usage_figures
from e2e3d_provider.lifecycle.maintenance.usage import _by_usage_api, reconcile_usage, server_figures
from tests.helpers import own_stack_server
from tests.test_usage import kept, listed

CONNS = {"rec_s3": "admin", "rec_maint": "maintenance", "rec_worker": "worker"}


@dataclass
class Site:
    storage: StorageHook
    metadata: MetadataHook
    server: str


@pytest.fixture(scope="module")
def site(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("reconcile-stack")
    before = os.environ.get("MINIO_SCANNER_SPEED")
    os.environ["MINIO_SCANNER_SPEED"] = "fastest"  # the stack's MinIO inherits it: a scan cycle a second
    try:
        info = stack.start_stack(base, owner_pid=os.getpid(), server=own_stack_server(s3_server))
    finally:
        if before is None:
            os.environ.pop("MINIO_SCANNER_SPEED", None)
        else:
            os.environ["MINIO_SCANNER_SPEED"] = before
    names = {conn_id: info.role_conn(role) for conn_id, role in CONNS.items()} | {"rec_pg": info.metadata_conn()}
    for conn_id, conn in names.items():
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    try:
        storage = StorageHook("rec_s3")
        storage.bootstrap()
        metadata = MetadataHook("rec_pg")
        metadata.migrate()
        yield Site(storage, metadata, s3_server)
    finally:
        for conn_id in names:
            os.environ.pop(f"AIRFLOW_CONN_{conn_id.upper()}", None)
        stack.stop_stack(base)


def raw_put(site: Site, bucket: str, key: str, size: int) -> None:
    """A write outside the provider: nothing counts it."""
    site.storage.client.put_object(bucket, key, io.BytesIO(b"r" * size), size)


def provider_write(site: Site, bucket: str, keys: dict[str, bytes]) -> None:
    """Writes through the provider, counted and stored as every writer does."""
    hook = StorageHook("rec_s3")
    for key, data in keys.items():
        hook.put_bytes(bucket, key, data)
    site.metadata.record_usage(hook.recount_touched())


def full_listing_matches(site: Site) -> None:
    figures = kept(site.metadata)
    for bucket in DEFAULT_BUCKETS:
        assert figures.get(bucket, dict.fromkeys(COUNT_FIELDS, 0)) == listed(site.storage, bucket), bucket


def listing_until_complete(site: Site, **kwargs: object) -> list[dict]:
    """Listing reconciliations until one completes the cycle of every bucket asked for; their summaries."""
    runs = []
    for _ in range(400):
        summary = reconcile_usage(site.storage, site.metadata, method="listing", **kwargs)
        runs.append(summary)
        if all(part["listing"]["complete"] for part in summary.values()):
            return runs
    raise AssertionError("the listing reconciliation never completed")


def test_the_maintenance_role_alone_may_read_the_usage_report() -> None:
    assert {"Effect": "Allow", "Action": ["admin:DataUsageInfo"]} in minio_policy("maintenance")["Statement"]
    for role in ("ingest", "worker", "api"):
        assert not any(a.startswith("admin:") for s in minio_policy(role)["Statement"] for a in s["Action"])


def test_a_clean_store_has_nothing_to_correct(site: Site) -> None:
    provider_write(site, BUCKET_OUTPUT, {"clean-1/a.obj": b"a" * 10, "clean-1/b.obj": b"b" * 20})
    provider_write(site, BUCKET_INPUT, {"clean-ds/img.jpg": b"i" * 30})
    listing_until_complete(site)  # anything an earlier test left is settled first
    summary = reconcile_usage(site.storage, site.metadata, method="listing")
    for bucket, part in summary.items():
        assert part["listing"]["complete"], bucket
        assert part["listing"]["drift_units"] == 0, (bucket, part)
        assert part["listing"]["units_checked"] >= (1 if bucket in (BUCKET_OUTPUT, BUCKET_INPUT) else 0)
    last = site.metadata.reconciliations(BUCKET_OUTPUT, limit=1)[0]
    assert last["method"] == "listing" and last["complete"] and last["drift_units"] == 0
    full_listing_matches(site)


def test_writes_outside_the_provider_are_found_and_corrected(site: Site) -> None:
    provider_write(site, BUCKET_OUTPUT, {"out-1/mesh.obj": b"m" * 100, "out-2/mesh.obj": b"n" * 50})
    provider_write(site, BUCKET_INPUT, {"in-ds/a.jpg": b"j" * 40})
    raw_put(site, BUCKET_OUTPUT, "out-1/extra.bin", 7)  # into a kept unit
    raw_put(site, BUCKET_OUTPUT, "out-3/new.bin", 9)  # a unit nothing kept
    raw_put(site, BUCKET_OUTPUT, ".work/out-4/handoff.json", 3)  # a dot area's unit, two folders deep
    site.storage.client.remove_object(BUCKET_OUTPUT, "out-2/mesh.obj")  # a delete marker nothing counted
    site.storage.client.remove_object(BUCKET_INPUT, "in-ds/a.jpg")  # the unit is gone from the server
    ghost = UsageCounts(counted_at=datetime.now(UTC) - timedelta(hours=1))
    ghost.add(BUCKET_ARCHIVE, "ghost-job/", {"objects": 3, "bytes": 300, "versions": 3, "stored_bytes": 300})
    site.metadata.record_usage(ghost)  # a unit the server never held
    assert kept(site.metadata)[BUCKET_OUTPUT] != listed(site.storage, BUCKET_OUTPUT)

    summary = reconcile_usage(site.storage, site.metadata, method="listing", workers=2)

    assert summary[BUCKET_OUTPUT]["listing"]["drift_units"] == 4
    assert summary[BUCKET_OUTPUT]["listing"]["delta"]["delete_markers"] == 1
    assert summary[BUCKET_INPUT]["listing"]["drift_units"] == 1
    assert summary[BUCKET_ARCHIVE]["listing"]["drift_units"] == 1
    assert site.metadata.usage_rows(BUCKET_ARCHIVE, units=["ghost-job/"]) == {}
    assert site.metadata.usage_rows(BUCKET_OUTPUT, units=[".work/out-4/"])[".work/out-4/"]["objects"] == 1
    full_listing_matches(site)
    recorded = site.metadata.reconciliations(BUCKET_OUTPUT, limit=1)[0]
    assert (recorded["drift_units"], recorded["drift_objects"], recorded["drift_bytes"]) == (4, 3, 19)
    again = reconcile_usage(site.storage, site.metadata, method="listing")
    assert all(part["listing"]["drift_units"] == 0 for part in again.values())
    figures = usage_figures(site.metadata)[BUCKET_OUTPUT]
    assert figures["reconciled_by"] == "listing" and figures["reconciled_hours_ago"] is not None
    assert figures["reconciled_hours_ago"] < 0.1 and figures["drift"]["units"] == 0


def test_a_listing_with_a_tiny_time_budget_resumes_and_completes_across_runs(site: Site) -> None:
    listing_until_complete(site, buckets=(BUCKET_ARCHIVE,))
    for i in range(130):  # enough top-level names for two key ranges
        raw_put(site, BUCKET_ARCHIVE, f"budget-{i:03d}/archive.tar", 5 + i)
    runs = listing_until_complete(site, buckets=(BUCKET_ARCHIVE,), time_budget=0, workers=2)

    assert len(runs) > 2  # each run stopped after a unit per range, and the next carried on
    parts = [run[BUCKET_ARCHIVE]["listing"] for run in runs]
    assert parts[0]["ranges"] == 2 and not parts[0]["complete"] and not parts[0]["resumed"]
    assert all(part["resumed"] for part in parts[1:])
    assert sum(part["drift_units"] for part in parts) == 130
    assert site.metadata.reconcile_cursors(BUCKET_ARCHIVE) == []
    history = site.metadata.reconciliations(BUCKET_ARCHIVE, limit=len(runs))
    assert [row["complete"] for row in history] == [True] + [False] * (len(runs) - 1)
    full_listing_matches(site)


def test_a_unit_a_writer_counted_during_the_walk_keeps_the_writer_s_figure(site: Site) -> None:
    listing_until_complete(site, buckets=(BUCKET_OUTPUT,))
    raw_put(site, BUCKET_OUTPUT, "busy-1/late.bin", 11)  # drift the walk would correct
    writer = UsageCounts()  # made when the walk reaches the unit: counted after the walk listed it

    def writer_counts_meanwhile(bucket: str, units: list[str]) -> None:
        if "busy-1/" in units and not writer:
            writer.counted_at = datetime.now(UTC)
            writer.add(bucket, "busy-1/", {"objects": 5, "bytes": 55, "versions": 5, "stored_bytes": 55})
            site.metadata.record_usage(writer)

    summary = reconcile_usage(
        site.storage, site.metadata, (BUCKET_OUTPUT,), method="listing", on_batch=writer_counts_meanwhile
    )
    assert writer, "the walk never reached the unit"
    assert summary[BUCKET_OUTPUT]["listing"]["skipped_newer"] == 1
    stored = site.metadata.usage_rows(BUCKET_OUTPUT, units=["busy-1/"])["busy-1/"]
    assert (stored["objects"], stored["bytes"]) == (5, 55)
    listing_until_complete(site, buckets=(BUCKET_OUTPUT,))  # the next walk, after the writer, corrects it
    full_listing_matches(site)


def test_the_usage_report_is_compared_only_when_no_write_came_after_the_scan(site: Site) -> None:
    """A report older than the kept figures' last change is not comparable (whatever the server's kind:
    the report here is the shape MinIO answers)."""
    row = {name: 0 for name in ("objects", "bytes", "versions", "stored_bytes", "delete_markers")}
    row["updated_at"] = datetime.now(UTC)
    report = {
        "lastUpdate": (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.%f123Z"),
        "bucketsUsageInfo": {BUCKET_INPUT: {"size": 10, "objectsCount": 1}},
    }
    result = _by_usage_api(site.storage, site.metadata, BUCKET_INPUT, report, row)
    assert not result["comparable"] and "writes since the server's last scan" in result["reason"]
    assert server_figures({"size": 48, "objectsCount": 3, "versionsCount": 5, "deleteMarkersCount": 1}, True) == {
        "versions": 4,
        "stored_bytes": 48,
    }


def wait_for_scan(storage: StorageHook, buckets: tuple[str, ...], after: datetime) -> dict:
    """The usage report once the scanner saved one after ``after`` that counts what ``buckets`` hold."""
    deadline = time.monotonic() + 90
    report: dict = {}
    while time.monotonic() < deadline:
        report = storage.data_usage() or {}
        usage = report.get("bucketsUsageInfo") or {}
        fresh = report.get("lastUpdate", "") > after.strftime("%Y-%m-%dT%H:%M:%S.%f")
        if fresh and all(
            server_figures(usage.get(b, {}), storage.versions_kept(b))
            == {k: v for k, v in listed(storage, b).items() if k in server_figures({}, storage.versions_kept(b))}
            for b in buckets
        ):
            return report
        time.sleep(0.5)
    seen = {b: (report.get("bucketsUsageInfo") or {}).get(b) for b in buckets}
    raise AssertionError(
        f"MinIO's scanner did not report the buckets' contents within 90 s: {report.get('lastUpdate')} {seen} "
        f"{ {b: listed(storage, b) for b in buckets} }"
    )


def test_the_usage_api_finds_drift_and_files_it_unattributed_on_minio(site: Site) -> None:
    if site.server != "minio":
        assert StorageHook("rec_maint").data_usage() is None  # SeaweedFS: no usage API, the listing does it
        summary = reconcile_usage(StorageHook("rec_maint"), site.metadata, (BUCKET_INPUT,), method="auto")
        assert summary[BUCKET_INPUT]["usage_api"]["comparable"] is False
        assert summary[BUCKET_INPUT]["listing"]["complete"]
        return
    maintenance = StorageHook("rec_maint")
    with pytest.raises(StorageAuthError):
        StorageHook("rec_worker").data_usage()
    listing_until_complete(site)
    raw_put(site, BUCKET_OUTPUT, "api-1/outside.bin", 21)  # versioned bucket
    raw_put(site, BUCKET_INPUT, "api-ds/outside.jpg", 13)  # never versioned
    written = datetime.now(UTC)
    wait_for_scan(maintenance, (BUCKET_OUTPUT, BUCKET_INPUT), written)

    summary = reconcile_usage(maintenance, site.metadata, (BUCKET_OUTPUT, BUCKET_INPUT), method="usage-api")

    assert summary[BUCKET_OUTPUT]["usage_api"]["delta"] == {"versions": 1, "stored_bytes": 21}
    assert summary[BUCKET_INPUT]["usage_api"]["delta"] == {
        "objects": 1,
        "bytes": 13,
        "versions": 1,
        "stored_bytes": 13,
        "delete_markers": 0,
    }
    assert site.metadata.usage_rows(BUCKET_INPUT, units=[UNATTRIBUTED])[UNATTRIBUTED]["objects"] == 1
    figures = kept(site.metadata)
    assert figures[BUCKET_INPUT] == listed(site.storage, BUCKET_INPUT)
    assert figures[BUCKET_OUTPUT]["stored_bytes"] == listed(site.storage, BUCKET_OUTPUT)["stored_bytes"]
    row = site.metadata.reconciliations(BUCKET_OUTPUT, limit=1)[0]
    assert (row["method"], row["drift_units"], row["drift_objects"], row["drift_bytes"]) == ("usage-api", 1, 1, 21)

    # the next run (auto) finds the kept figures changed since the scan; a listing attributes the drift
    summary = reconcile_usage(maintenance, site.metadata, (BUCKET_OUTPUT, BUCKET_INPUT), method="auto")
    assert summary[BUCKET_INPUT]["listing"]["complete"]
    assert site.metadata.usage_rows(BUCKET_INPUT, units=[UNATTRIBUTED]) == {}
    assert site.metadata.usage_rows(BUCKET_INPUT, units=["api-ds/"])["api-ds/"]["objects"] == 1
    full_listing_matches(site)

    # auto only reports what the report shows and lets a listing confirm it: nothing filed unattributed
    raw_put(site, BUCKET_INPUT, "api-ds/second.jpg", 7)
    wait_for_scan(maintenance, (BUCKET_INPUT,), datetime.now(UTC))
    before = site.metadata.reconciliations(BUCKET_INPUT, limit=1)[0]["id"]
    summary = reconcile_usage(maintenance, site.metadata, (BUCKET_INPUT,), method="auto")
    assert summary[BUCKET_INPUT]["usage_api"]["drift_found"] and summary[BUCKET_INPUT]["listing"]["complete"]
    new = [r for r in site.metadata.reconciliations(BUCKET_INPUT) if r["id"] > before]
    assert [(r["method"], r["drift_objects"]) for r in new] == [("listing", 1)]  # the report's drift not filed
    assert site.metadata.usage_rows(BUCKET_INPUT, units=[UNATTRIBUTED]) == {}
    assert site.metadata.usage_rows(BUCKET_INPUT, units=["api-ds/"])["api-ds/"]["objects"] == 2
    full_listing_matches(site)


def test_the_maintenance_step_reads_its_time_budget_setting(site: Site) -> None:
    assert steps.reconcile_usage is reconcile_usage
    assert steps.setting(site.metadata, steps.CONFIG_RECONCILE_BUDGET_SECONDS) == 600
    site.metadata.set_config(steps.CONFIG_RECONCILE_BUDGET_SECONDS, 5)
    try:
        assert steps.setting(site.metadata, steps.CONFIG_RECONCILE_BUDGET_SECONDS) == 5
        assert steps.setting(site.metadata, steps.CONFIG_RECONCILE_BUDGET_SECONDS, 2) == 2
    finally:
        site.metadata.set_config(steps.CONFIG_RECONCILE_BUDGET_SECONDS, 600)
