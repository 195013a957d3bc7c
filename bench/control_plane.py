"""The maintenance control plane at growing numbers of published jobs: seconds, S3 requests, PostgreSQL
connections and queries, and peak memory of every operation, in one run.

Run:  python -m bench.control_plane [--sizes 100,10000,100000] [--archive-budget 30]

For each size N a fresh embedded stack is loaded with N published jobs (7 objects each: 5 result files,
manifest, SUCCESS; labels and PostgreSQL rows as publish makes them, bulk-loaded by
``e2e3d_provider.devstack.bulk_jobs``): N/10 succeeded jobs waiting to be archived, N/10 archived jobs
past the retention cutoff (with their archive copies), the rest archived and recent. Then, in order:

  statistics(output)   StorageHook.statistics of the output bucket (the maintenance count of one bucket)
  record_statistics    the maintenance step: the 4 buckets counted in parallel, into PostgreSQL
  stats route          GET /api/storage/stats (median of 20; FastAPI in process, auth left out)
  results route        GET /api/job/{id}/results (median of 20)
  archive_completed    the sweep over the N/10 backlog, for at most --archive-budget seconds: jobs/s
  apply_retention      removal of the N/10 eligible jobs from output

S3 requests are counted at urllib3 (every control-plane call goes through the hook's minio client),
PostgreSQL connections and statements at MetadataHook; peak RSS is VmHWM (reset before each operation)
minus the RSS before it. Targets at 100,000 jobs: stats route <= 100 ms; the count <= 60 s and
<= 100 MB; retention of 10,000 eligible jobs <= 60 s; archive >= 20 jobs/s. Never a test assertion.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import BENCH_CONN_ID, bench_environment

STAMP = "20250101T000000Z"
NOW = datetime.now(UTC)


class Counters:
    """S3 requests (urllib3), PostgreSQL connections and statements (MetadataHook) while active."""

    def __init__(self) -> None:
        self.s3 = self.pg_connections = self.pg_statements = 0

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        import urllib3

        from e2e3d_provider.hooks.metadata import MetadataHook

        real_urlopen, real_connect = urllib3.PoolManager.urlopen, MetadataHook._connect
        counters = self

        def urlopen(pool: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            counters.s3 += 1
            return real_urlopen(pool, method, url, *args, **kwargs)

        class CountingCursor:
            def __init__(self, cursor: Any) -> None:
                self._cursor = cursor

            def execute(self, *args: Any, **kwargs: Any) -> Any:
                counters.pg_statements += 1
                return self._cursor.execute(*args, **kwargs)

            def __getattr__(self, name: str) -> Any:
                return getattr(self._cursor, name)

            def __enter__(self) -> CountingCursor:
                self._cursor.__enter__()
                return self

            def __exit__(self, *exc: Any) -> Any:
                return self._cursor.__exit__(*exc)

        class CountingConnection:
            def __init__(self, conn: Any) -> None:
                self._conn = conn

            def cursor(self, *args: Any, **kwargs: Any) -> CountingCursor:
                return CountingCursor(self._conn.cursor(*args, **kwargs))

            def __getattr__(self, name: str) -> Any:
                return getattr(self._conn, name)

        def connect(hook: Any) -> Any:
            counters.pg_connections += 1
            return CountingConnection(real_connect(hook))

        urllib3.PoolManager.urlopen = urlopen  # type: ignore[method-assign]
        MetadataHook._connect = connect  # type: ignore[method-assign]
        try:
            yield
        finally:
            urllib3.PoolManager.urlopen = real_urlopen  # type: ignore[method-assign]
            MetadataHook._connect = real_connect  # type: ignore[method-assign]


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(name: str, func: Callable[[], Any], repeat: int = 1) -> dict[str, Any]:
    counters = Counters()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = rss_mb("VmRSS")
    times = []
    with counters.installed():
        for _ in range(repeat):
            started = time.perf_counter()
            outcome = func()
            times.append(time.perf_counter() - started)
    return {
        "operation": name,
        "seconds": statistics.median(times),
        "s3": counters.s3 // repeat,
        "pg_conn": counters.pg_connections // repeat,
        "pg_stmt": counters.pg_statements // repeat,
        "rss_mb": max(0.0, rss_mb("VmHWM") - before),
        "outcome": outcome,
    }


def run_size(n: int, archive_budget: float) -> list[dict[str, Any]]:
    with bench_environment(f"control-{n}"):
        from fastapi.testclient import TestClient

        from e2e3d_provider.api.app import create_app
        from e2e3d_provider.api.auth import authorized_user
        from e2e3d_provider.devstack.bulk_jobs import BulkJob, load_jobs
        from e2e3d_provider.hooks.metadata import MetadataHook
        from e2e3d_provider.hooks.storage import StorageHook
        from e2e3d_provider.lifecycle.durability.archive import archive_completed
        from e2e3d_provider.lifecycle.durability.retention import apply_retention
        from e2e3d_provider.lifecycle.maintenance.steps import record_statistics

        storage, metadata = StorageHook(BENCH_CONN_ID), MetadataHook()
        storage.bootstrap()
        metadata.migrate()
        tenth = max(1, n // 10)
        old = NOW - timedelta(days=400)
        jobs = [BulkJob(f"bj-s{i:06d}", STAMP, "succeeded", old + timedelta(seconds=i)) for i in range(tenth)]
        jobs += [
            BulkJob(f"bj-e{i:06d}", STAMP, "archived", old + timedelta(seconds=i), archived=True) for i in range(tenth)
        ]
        jobs += [
            BulkJob(f"bj-r{i:06d}", STAMP, "archived", NOW - timedelta(days=1, seconds=i)) for i in range(n - 2 * tenth)
        ]
        started = time.perf_counter()
        for start in range(0, len(jobs), 20_000):  # in slices: the bodies of one slice in memory at a time
            load_jobs(storage, metadata, jobs[start : start + 20_000])
        loaded = time.perf_counter() - started
        print(f"N={n}: loaded {len(jobs)} jobs ({len(jobs) * 7 + tenth * 7} objects) in {loaded:.0f}s", flush=True)

        app = create_app(BENCH_CONN_ID)
        app.dependency_overrides[authorized_user] = lambda: "bench"
        client = TestClient(app)

        def route(path: str) -> Callable[[], int]:
            def get() -> int:
                response = client.get(path)
                response.raise_for_status()
                return response.status_code

            return get

        rows = [
            measure("statistics(output)", lambda: storage.statistics("output")["objects"]),
            measure("record_statistics", lambda: record_statistics(storage, metadata)["buckets"]["output"]["objects"]),
            measure("stats route", route("/api/storage/stats"), repeat=20),
            measure("results route", route(f"/api/job/{jobs[-1].job_id}/results"), repeat=20),
        ]
        archive = measure("archive_completed", lambda: archive_completed(storage, metadata, time_budget=archive_budget))
        archive["rate"] = archive["outcome"]["archived"] / archive["seconds"]
        retention = measure("apply_retention", lambda: apply_retention(storage, metadata, 30))
        retention["rate"] = retention["outcome"]["removed"] / retention["seconds"]
        rows += [archive, retention]
        for row in rows:
            row["n"] = n
        return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,10000,100000")
    parser.add_argument("--archive-budget", type=float, default=30.0)
    args = parser.parse_args()
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        rows += run_size(n, args.archive_budget)
    print(
        f"\n{'jobs':>8} {'operation':<20}{'seconds':>10}{'jobs/s':>9}{'S3 req':>9}{'PG conn':>9}{'PG stmt':>9}"
        f"{'peak MB':>9}  outcome"
    )
    for r in rows:
        rate = f"{r['rate']:.1f}" if "rate" in r else "-"
        outcome = r["outcome"]
        if isinstance(outcome, dict):
            outcome = {k: v for k, v in outcome.items() if k in ("archived", "removed", "complete", "waiting")}
        print(
            f"{r['n']:>8} {r['operation']:<20}{r['seconds']:>10.3f}{rate:>9}{r['s3']:>9}{r['pg_conn']:>9}"
            f"{r['pg_stmt']:>9}{r['rss_mb']:>9.1f}  {outcome}"
        )
    sizes = sorted({r["n"] for r in rows})
    if len(sizes) > 1:
        print("\ngrowth of seconds from the smallest to the largest size (x jobs: x" + f"{sizes[-1] / sizes[0]:.0f})")
        for op in dict.fromkeys(r["operation"] for r in rows):
            first = next(r for r in rows if r["operation"] == op and r["n"] == sizes[0])
            last = next(r for r in rows if r["operation"] == op and r["n"] == sizes[-1])
            print(f"  {op:<20} x{last['seconds'] / max(first['seconds'], 1e-6):.1f}")
    print("\n" + json.dumps([{k: v for k, v in r.items() if k != "outcome"} for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
