"""The storage dashboard, as a person sees it: a lifecycle run on the real stack, the API serving the
dashboard, headless Chromium opening it with the Airflow UI's login cookie; every chart drawn with data
points, every figure equal to what PostgreSQL holds. Also the telemetry behind it: the access log, storage
errors, worker disks, and the metrics that go out through Airflow's Stats."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from e2e3d_provider.devstack.demo import SAMPLE_DIR as SAMPLE
from e2e3d_provider.hooks import telemetry
from e2e3d_provider.hooks.metadata import SCHEMA, MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.inputs.ingest import ingest
from e2e3d_provider.lifecycle.maintenance import steps as maintenance
from e2e3d_provider.lifecycle.worker.host_sweep import ScratchBounds, sweep_host
from tests.helpers import ROLES, as_user, load_repo_dag, token

CHARTS = (
    "space",
    "objects",
    "disks",
    "throughput",
    "cache",
    "errors",
    "top-jobs",
    "top-datasets",
    "by-hour",
    "jobs",
)


def query(metadata: MetadataHook, sql: str) -> list[tuple]:
    with metadata.transaction() as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_the_dashboard_draws_every_chart_with_the_figures_postgresql_holds(
    api: str,
    airflow_db,
    storage: StorageHook,
    metadata: MetadataHook,
    browser,
    tmp_path: Path,
    unique_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    data_root = tmp_path / "data"
    monkeypatch.setenv("E2E3D_DATA_ROOT", str(data_root))
    dataset = f"ds-{unique_id}"
    ingest(storage, SAMPLE, dataset)
    maintenance.record_statistics(storage, metadata)  # a first snapshot, then growth
    dag = load_repo_dag("e2e3d_reconstruction.py", "e2e3d_reconstruction")
    run = dag.test(run_conf={"dataset": dataset, "job_id": unique_id})
    assert str(run.state) == "success"
    time.sleep(1.1)
    maintenance.record_statistics(storage, metadata)
    for _ in range(3):  # someone downloads the results three times: 3 x every URL in the access log
        assert httpx.get(f"{api}/api/v1/jobs/{unique_id}/results", headers=as_user("viewer")).status_code == 200
    grant = httpx.post(
        f"{api}/api/v1/datasets/{dataset}-more/uploads",
        json={"files": [{"name": "x.jpg", "bytes": 10}]},
        headers=as_user("runner"),
    )
    assert grant.status_code == 200
    with pytest.raises(Exception, match="does not exist"):  # a failed storage operation: counted
        storage.list_objects("no-such-bucket-here")
    sweep_host(data_root, ScratchBounds(), force=True)  # this worker's disk, as every sweep records it
    for i in range(30):  # many kinds of failure (a whole test session's): the chart must stay readable
        telemetry.storage_error(f"operation-{i:02d}-with-a-long-name", "output", RuntimeError("x"))
    telemetry.flush()

    # a reconciliation of output (as the maintenance DAG's reconcile_usage records one): its age is shown
    metadata.record_reconciliation("output", "listing", datetime.now(UTC), complete=True, drift_objects=2)

    browser.get(f"{api}/api/v1/health")  # the cookie belongs to the API's origin, as the UI's login sets it
    browser.add_cookie({"name": "_token", "value": token("viewer", ROLES["viewer"]), "path": "/"})
    browser.get(f"{api}/dashboard")
    WebDriverWait(browser, 90).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true", browser.find_element(
        By.ID, "error"
    ).text
    for chart in CHARTS:
        element = browser.find_element(By.ID, f"chart-{chart}")
        assert int(element.get_attribute("data-points") or 0) > 0, chart
        assert element.find_elements(By.CSS_SELECTOR, "svg.main-svg"), chart  # plotly drew it
    # the page's own check: no chart label cut off or overlapping another
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-selfcheck") == "[]"

    shown = {  # each figure card's raw value (its text is the formatted one)
        e.get_attribute("data-key"): e.get_attribute("data-value")
        for e in browser.find_elements(By.CSS_SELECTOR, "#figures [data-key]")
    }
    latest = query(
        metadata,
        f"""SELECT DISTINCT ON (bucket) bucket, objects, bytes FROM {SCHEMA}.storage_stats
            WHERE prefix = '' ORDER BY bucket, taken_at DESC""",
    )
    for bucket, objects, nbytes in latest:
        assert (shown[f"objects:{bucket}"], shown[f"bytes:{bucket}"]) == (str(objects), str(nbytes)), bucket
        assert f"reconciled:{bucket}" in shown, bucket  # how old the last check against the server is, or never
    assert 0 <= float(shown["reconciled:output"]) < 1
    age = browser.find_element(By.CSS_SELECTOR, '#figures [data-key="reconciled:output"]').text
    assert age.startswith("reconciled ") and "by listing" in age, age
    for status, count in query(metadata, f"SELECT status, count(*) FROM {SCHEMA}.jobs GROUP BY 1"):
        assert shown[f"jobs:{status}"] == str(count), status
    (requests,) = query(metadata, f"SELECT count(*) FROM {SCHEMA}.access_log WHERE at >= now() - interval '30 days'")[0]
    assert shown["requests"] == str(requests) and requests >= 3 * 20 + 1
    (moved, skipped) = query(
        metadata,
        f"""SELECT coalesce(sum(bytes), 0), coalesce(sum(skipped_bytes), 0) FROM {SCHEMA}.transfers
            WHERE direction = 'download' AND created_at >= now() - interval '30 days'""",
    )[0]
    assert shown["cache-hit-ratio"] == str(round(skipped / (moved + skipped), 4)).rstrip("0").rstrip(".")
    (host_rows,) = query(metadata, f"SELECT count(DISTINCT host) FROM {SCHEMA}.worker_disks")[0]
    assert host_rows >= 1 and any(key.startswith("disk:") for key in shown)

    # `e2e3d stats` prints the same numbers as a table
    import subprocess
    import sys

    out = subprocess.run(
        [str(Path(sys.executable).parent / "e2e3d"), "stats"], capture_output=True, text=True, check=True
    ).stdout
    for bucket, objects, nbytes in latest:
        assert any(line.split()[:3] == [bucket, str(objects), str(nbytes)] for line in out.splitlines()), out
    assert f"{unique_id}  " in out and "cache hit ratio (downloads):" in out and "list" in out

    shot = tmp_path / "dashboard.png"
    browser.set_window_size(1400, 2000)
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000  # the README's screenshots come from tests/test_dashboard_page.py


def test_the_access_log_and_error_rows_never_fail_what_they_describe(metadata: MetadataHook) -> None:
    buffer = telemetry.RowBuffer(writer=lambda batch: (_ for _ in ()).throw(RuntimeError("PostgreSQL is down")))
    buffer.add("access_log", {"action": "download", "bucket": "output", "key": "k"})
    assert buffer.flush() == 0 and buffer.dropped == 1  # dropped with a warning, never raised
    written = telemetry.RowBuffer(writer=metadata.record_telemetry)
    written.add("storage_errors", {"operation": "probe", "bucket": "b", "error_class": "X", "host": "h"})
    assert written.flush() == 1
    assert query(metadata, f"SELECT count(*) FROM {SCHEMA}.storage_errors WHERE operation = 'probe'")[0][0] >= 1


def test_metrics_go_out_through_airflow_stats(storage: StorageHook, tmp_path: Path) -> None:
    from airflow.sdk._shared.observability.metrics.base_stats_logger import NoStatsLogger
    from airflow.sdk.observability.stats import Stats

    calls: list[tuple] = []

    class Recorder(NoStatsLogger):
        def incr(self, stat, count=1, rate=1, *, tags=None):
            calls.append(("incr", stat, count, tags))

        def timing(self, stat, dt, *, tags=None):
            calls.append(("timing", stat, dt, tags))

    Stats.initialize(factory=Recorder, export_legacy_names=False)
    try:
        (tmp_path / "a.bin").write_bytes(b"x" * 1000)
        storage.upload_dir(tmp_path, "output", "metrics-probe/")
        with pytest.raises(Exception, match="does not exist"):
            storage.list_objects("no-such-bucket-metrics")
    finally:
        Stats.initialize(factory=NoStatsLogger, export_legacy_names=False)
    names = {(kind, stat) for kind, stat, *_ in calls}
    assert {("incr", telemetry.METRIC_TRANSFER_BYTES), ("timing", telemetry.METRIC_TRANSFER_SECONDS)} <= names
    sent = next(c for c in calls if c[1] == telemetry.METRIC_TRANSFER_BYTES)
    assert sent[2] == 1000 and sent[3] == {"direction": "upload", "bucket": "output"}
    error = next(c for c in calls if c[1] == telemetry.METRIC_STORAGE_ERRORS)
    assert error[3]["error"] == "BucketNotFoundError"


def test_the_plugin_puts_the_dashboard_in_the_ui_nav() -> None:
    from e2e3d_provider.plugin import E2E3DPlugin

    views = {v["name"]: v for v in E2E3DPlugin.external_views}
    view = views["E2E3D storage"]
    assert view["href"] == "/e2e3d/dashboard" and view["destination"] == "nav" and view["url_route"]
    # the UI finds a plugin page by its url_route: each view has its own
    routes = [v["url_route"] for v in E2E3DPlugin.external_views]
    assert len(set(routes)) == len(routes) == len(views), routes


def test_telemetry_is_trimmed_by_retention_and_a_filling_disk_is_a_health_warning(
    storage: StorageHook, metadata: MetadataHook, unique_id: str
) -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    host = f"worker-{unique_id}"
    gib = 1024**3
    metadata.record_telemetry(
        {
            "access_log": [
                {"at": now - timedelta(days=100), "action": "download", "bucket": "output", "key": f"{unique_id}/old"},
                {"at": now, "action": "download", "bucket": "output", "key": f"{unique_id}/new"},
            ],
            # a disk of 100 GiB that grew 10 GiB in the last two hours: full in well under 14 days
            "worker_disks": [
                {
                    "at": now - timedelta(hours=2),
                    "host": host,
                    "data_root": "/d",
                    "total_bytes": 100 * gib,
                    "used_bytes": 50 * gib,
                    "cache_bytes": 0,
                },
                {
                    "at": now,
                    "host": host,
                    "data_root": "/d",
                    "total_bytes": 100 * gib,
                    "used_bytes": 60 * gib,
                    "cache_bytes": 0,
                },
            ],
        }
    )
    health = maintenance.check_health(storage, metadata)
    assert any(w.startswith(f"worker {host}'s data root fills in") for w in health["warnings"]), health
    removed = maintenance.trim_telemetry(metadata, 90)
    assert removed["access_log"] >= 1
    keys = {k for (k,) in query(metadata, f"SELECT key FROM {SCHEMA}.access_log WHERE key LIKE '{unique_id}/%'")}
    assert keys == {f"{unique_id}/new"}


def test_the_error_chart_keeps_a_few_series_and_counts_failures_by_operation_not_by_key() -> None:
    """A session's worth of failures once drew a legend entry per object key (the ``what`` of a transfer is
    the key), every label cut off: figures group by operation, the top few shown, the rest summed."""
    from e2e3d_provider.hooks.storage import operation_of
    from e2e3d_provider.lifecycle.maintenance.dashboard import MAX_ERROR_SERIES, error_series

    assert operation_of("put output/job/a.obj") == ("put", "output")
    assert operation_of("list no-such-bucket") == ("list", "no-such-bucket")
    assert operation_of("crash-time-2/pointcloud/chunk_20.ply") == ("transfer", None)
    assert operation_of("") == ("transfer", None)
    from datetime import UTC, datetime

    hour, later = datetime(2026, 12, 4, 10, tzinfo=UTC), datetime(2026, 12, 4, 11, tzinfo=UTC)
    rows = [(hour, f"op{i}", i + 1) for i in range(20)] + [(later, "op19", 5)]
    series = error_series(rows)
    assert len(series) == MAX_ERROR_SERIES + 1
    assert set(series) - {"other (14 operations)"} == {f"op{i}" for i in range(14, 20)}
    assert series["op19"] == {"at": ["2026-12-04T10:00:00+00:00", "2026-12-04T11:00:00+00:00"], "errors": [20, 5]}
    assert sum(series["other (14 operations)"]["errors"]) == sum(range(1, 15))
    few = error_series([(hour, "put", 1), (hour, "get", 2)])
    assert set(few) == {"put", "get"}
