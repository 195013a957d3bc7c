"""Usage reconciliation: time and peak RSS of ``reconcile_usage`` by MinIO's usage API and by listing.

Run:  python bench/usage_reconcile.py --server minio|seaweedfs [--jobs 10000] [--workers 8]

A stack of this run's own (``--server``; MinIO's scanner at ``MINIO_SCANNER_SPEED=fastest``) is loaded
with ``--jobs`` published jobs (``devstack.bulk_jobs.load_jobs``: 7 objects each in ``output``) whose
figures nothing kept, so the first listing corrects every unit. Each measurement runs in a child process
of its own: its RSS after its imports (baseline), and its peak during the reconciliation (``VmHWM``, reset
after the imports; ``process_peak_rss_mb`` is the child's whole life, imports included):
listing with drift (every job's unit), listing again (nothing to correct), and on MinIO the usage API once
the scanner counted what the buckets hold. Prints one line per measurement. Never a test assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STAMP = "20261201T000000Z"


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident set (``VmRSS``) or its peak since the last reset (``VmHWM``), in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> None:
    """Start the peak (``VmHWM``) afresh, so the imports' own peak does not hide the reconciliation's."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def measure(method: str, workers: int) -> None:
    """In the child: one reconciliation of ``output``, and what it took."""
    from e2e3d_provider.hooks.metadata import MetadataHook
    from e2e3d_provider.hooks.storage import StorageHook
    from e2e3d_provider.lifecycle.maintenance.usage import reconcile_usage

    storage, metadata = StorageHook("bench_maint"), MetadataHook("bench_pg")
    metadata.bucket_usage()  # connected and migrated before the clock starts
    baseline = rss_mb()
    reset_peak()
    started = time.perf_counter()
    summary = reconcile_usage(storage, metadata, ("output",), method=method, workers=workers)
    seconds = time.perf_counter() - started
    peak = rss_mb("VmHWM")
    lifetime_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    part = summary["output"]
    found = part.get("listing") or part.get("usage_api")
    print(
        json.dumps(
            {
                "method": method,
                "seconds": round(seconds, 2),
                "baseline_rss_mb": round(baseline, 1),
                "peak_rss_mb": round(peak, 1),
                "process_peak_rss_mb": round(lifetime_peak, 1),
                "units_checked": found.get("units_checked"),
                "drift_units": found.get("drift_units", found.get("delta")),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=("seaweedfs", "minio"), default="seaweedfs")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--measure", choices=("listing", "usage-api"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.workers)
        return
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="e2e3d-bench-airflow-"))
    os.environ["MINIO_SCANNER_SPEED"] = "fastest"
    from e2e3d_provider.devstack import stack
    from e2e3d_provider.devstack.bulk_jobs import BulkJob, load_jobs
    from e2e3d_provider.hooks.metadata import MetadataHook
    from e2e3d_provider.hooks.storage import StorageHook
    from e2e3d_provider.lifecycle.maintenance.usage import server_figures

    base = Path(tempfile.mkdtemp(prefix="e2e3d-bench-usage-"))
    info = stack.start_stack(base / "stack", owner_pid=os.getpid(), server=args.server)
    conns = {"bench_admin": info.minio_conn(), "bench_maint": info.role_conn("maintenance")}
    conns["bench_pg"] = info.metadata_conn()
    for conn_id, conn in conns.items():
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    try:
        admin, metadata = StorageHook("bench_admin"), MetadataHook("bench_pg")
        admin.bootstrap()
        metadata.migrate()
        started = time.perf_counter()
        old = datetime.now(UTC) - timedelta(days=1)
        jobs = [BulkJob(f"bj-{i:06d}", STAMP, "succeeded", old + timedelta(seconds=i)) for i in range(args.jobs)]
        for start in range(0, len(jobs), 2_000):
            load_jobs(admin, metadata, jobs[start : start + 2_000])
        listed = admin.statistics("output")
        print(
            f"# {args.server}: loaded {args.jobs} jobs, {listed['objects']} objects in output "
            f"in {time.perf_counter() - started:.0f} s"
        )

        def child(method: str) -> None:
            out = subprocess.run(
                [sys.executable, __file__, "--measure", method, "--workers", str(args.workers)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            print(out.strip().splitlines()[-1])

        child("listing")  # every unit drifted (nothing was kept)
        child("listing")  # nothing to correct
        if args.server == "minio":
            deadline = time.monotonic() + 600
            want = {k: listed[k] for k in ("versions", "stored_bytes")}
            while time.monotonic() < deadline:
                usage = ((admin.data_usage() or {}).get("bucketsUsageInfo") or {}).get("output") or {}
                kept_at = max(row["updated_at"] for row in metadata.bucket_usage())
                scanned = (admin.data_usage() or {}).get("lastUpdate", "")
                if server_figures(usage, True) == want and scanned > kept_at.strftime("%Y-%m-%dT%H:%M:%S.%f"):
                    break
                time.sleep(1)
            child("usage-api")
    finally:
        stack.stop_stack(base / "stack")
        shutil.rmtree(base, ignore_errors=True)  # 3 GB of stack data at 10,000 jobs


if __name__ == "__main__":
    main()
