"""Retention at scale: jobs/s of ``apply_retention`` over N eligible archived jobs, on either S3 server.

Run:  python -m bench.retention [--jobs 10000] [--server seaweedfs|minio] [--republish 0.2] [--profile out.svg]

A fresh embedded stack is loaded with N archived jobs past the cutoff (7 objects each in ``output``, the
same set in ``archive``; ``e2e3d_provider.devstack.bulk_jobs``) and N/10 recent ones; ``--republish`` of
the eligible jobs are loaded twice (a second version of each object, as a republish leaves). Then one
retention run: seconds, jobs/s, S3 requests and PostgreSQL statements (bench.control_plane's counters).
Target: >= 200 jobs/s at 10,000 eligible jobs on both servers. Never a test assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import BENCH_CONN_ID, bench_environment
from bench.control_plane import measure

STAMP = "20250101T000000Z"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--server", default="seaweedfs", choices=("seaweedfs", "minio"))
    parser.add_argument("--republish", type=float, default=0.2, help="share of eligible jobs loaded twice")
    parser.add_argument("--profile", help="record a py-spy flame graph of the retention run into this file")
    args = parser.parse_args()
    with bench_environment(f"retention-{args.jobs}", server=args.server):
        from e2e3d_provider.devstack.bulk_jobs import BulkJob, load_jobs
        from e2e3d_provider.hooks.metadata import MetadataHook
        from e2e3d_provider.hooks.storage import StorageHook
        from e2e3d_provider.lifecycle.durability.retention import apply_retention

        storage, metadata = StorageHook(BENCH_CONN_ID), MetadataHook()
        storage.bootstrap()
        metadata.migrate()
        now = datetime.now(UTC)
        old = now - timedelta(days=400)
        eligible = [
            BulkJob(f"bj-e{i:06d}", STAMP, "archived", old + timedelta(seconds=i), archived=True)
            for i in range(args.jobs)
        ]
        recent = [
            BulkJob(f"bj-r{i:06d}", STAMP, "archived", now - timedelta(days=1, seconds=i))
            for i in range(args.jobs // 10)
        ]
        started = time.perf_counter()
        for start in range(0, len(eligible), 10_000):
            load_jobs(storage, metadata, eligible[start : start + 10_000])
        twice = eligible[: int(len(eligible) * args.republish)]
        if twice:
            load_jobs(storage, metadata, twice)  # rows exist already (ON CONFLICT DO NOTHING); objects again
        load_jobs(storage, metadata, recent)
        print(
            f"loaded {len(eligible)} eligible ({len(twice)} twice) and {len(recent)} recent jobs "
            f"in {time.perf_counter() - started:.0f}s on {args.server}",
            flush=True,
        )

        spy = None
        if args.profile:
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "-o",
                    args.profile,
                    "-r",
                    "50",
                    "-p",
                    str(os.getpid()),
                    "--threads",
                    "--idle",
                    "--format",
                    "raw",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
        row = measure("apply_retention", lambda: apply_retention(storage, metadata, 30))
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait()
        outcome = row["outcome"]
        rate = outcome["removed"] / row["seconds"]
        print(
            f"{args.server}: {outcome['removed']} jobs removed ({outcome['objects_deleted']} versions) in "
            f"{row['seconds']:.1f}s = {rate:.0f} jobs/s; S3 requests {row['s3']}, PG statements {row['pg_stmt']}, "
            f"peak {row['rss_mb']:.0f} MB"
        )
        print(json.dumps({k: v for k, v in row.items() if k != "outcome"} | {"rate": rate, "server": args.server}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
