"""Recording a file inventory in PostgreSQL: MetadataHook.record_files against row-by-row inserts.

Run:  python -m bench.metadata [--files 100000] [--repeat 3]

Baseline  row-by-row  one INSERT ... ON CONFLICT per file, in one transaction (what a naive loop does)
Ours      bulk        MetadataHook.record_files: one INSERT ... SELECT FROM unnest(...) upsert
Prints median seconds and the ratio. Never used as a test assertion.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import bench_environment


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with bench_environment("metadata"):
        from e2e3d_provider.hooks.metadata import SCHEMA, MetadataHook

        hook = MetadataHook()
        hook.migrate()
        bulk_times, row_times = [], []
        for rep in range(args.repeat):
            for method in ("row-by-row", "bulk"):  # alternating
                job = f"bench-{method}-{rep}"
                stamp = "20261124T120000Z"
                hook.record_job(job, stamp, "ds", "running")
                rows = [("images", f"{job}/images/{i:06d}.jpg", 300_000 + i, f"{i:064x}") for i in range(args.files)]
                started = time.perf_counter()
                if method == "bulk":
                    hook.record_files(job, stamp, rows)
                    bulk_times.append(time.perf_counter() - started)
                else:
                    with hook.transaction() as cur:
                        for kind, key, size, sha in rows:
                            cur.execute(
                                f"INSERT INTO {SCHEMA}.job_files (job_id, stamp, kind, key, size, sha256) "
                                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (job_id, stamp, key) DO UPDATE "
                                "SET size = EXCLUDED.size, sha256 = EXCLUDED.sha256",
                                (job, stamp, kind, key, size, sha),
                            )
                    row_times.append(time.perf_counter() - started)
                assert len(hook.job_files(job, stamp)) == args.files
        bulk, row = statistics.median(bulk_times), statistics.median(row_times)
        print(f"{args.files} files, median of {args.repeat}:")
        print(f"  row-by-row  {row:8.2f} s  ({args.files / row:9.0f} rows/s)")
        print(f"  bulk        {bulk:8.2f} s  ({args.files / bulk:9.0f} rows/s)  x{row / bulk:.1f} faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
