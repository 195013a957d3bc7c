"""Backups and restore: the recovery point and recovery time they give, on the demo's data and on 10,000 objects.

Run:  python -m bench.durability [--jobs 1430] [--file-size 4096] [--skip-demo]

Data:
  demo     what ``e2e3d demo`` leaves (the sample dataset, one reconstructed and right-sized job), made by
           running ``e2e3d demo --keep-stack`` on a stack of this run's own
  10k      ``--jobs`` published jobs of 5 result files of ``--file-size`` random bytes, each with its manifest and
           SUCCESS (7 objects a job: 1,430 jobs are 10,010 objects), and their PostgreSQL rows
Baseline (same data, same server, same run):
  full     a backup with nothing to start from (an empty target): every object read and sent
Ours:
  incremental  the next backup, with nothing changed, and after 1 % more jobs: decided from listings, the last
               catalog and the manifests; only new contents read and sent
  restore      every object and the schema destroyed, then ``e2e3d restore`` of the latest backup
Prints: seconds and objects read for each, incremental over full, the recovery point (the daily DAG's interval
plus the time a backup takes to complete) and the recovery time (the restore's seconds). Never a test assertion.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, bench_environment


def destroy(storage, metadata) -> None:
    from minio.deleteobjects import DeleteObject

    from e2e3d_provider.core.layout import DEFAULT_BUCKETS

    for bucket in DEFAULT_BUCKETS:
        versions = storage.client.list_objects(bucket, recursive=True, include_version=True)
        errors = list(
            storage.client.remove_objects(bucket, [DeleteObject(o.object_name, o.version_id) for o in versions])
        )
        assert not errors, errors
    with metadata.transaction() as cur:
        cur.execute("DROP SCHEMA e2e3d CASCADE")


def count_objects(storage) -> tuple[int, int]:
    from e2e3d_provider.core.layout import DEFAULT_BUCKETS

    listed = [o for b in DEFAULT_BUCKETS for o in storage.list_objects(b) if not o.key.startswith(".work/")]
    return len(listed), sum(o.size for o in listed)


def measure(label: str, grow) -> dict:
    """Full backup, unchanged incremental, incremental after growth, destroy, restore: on the stack in os.environ."""
    from e2e3d_provider.hooks.metadata import MetadataHook
    from e2e3d_provider.hooks.storage import StorageHook
    from e2e3d_provider.lifecycle.durability.backup import BackupTarget, run_backup
    from e2e3d_provider.lifecycle.durability.restore import run_restore

    source, admin, metadata = StorageHook("minio_maintenance"), StorageHook("minio_admin"), MetadataHook()
    target = BackupTarget.from_hook(StorageHook("e2e3d_backup"))
    spool = Path(tempfile.mkdtemp(prefix="e2e3d-bench-spool-"))
    objects, size = count_objects(admin)
    full = run_backup(source, target, metadata, spool)
    same = run_backup(source, target, metadata, spool)
    grow()
    grown = run_backup(source, target, metadata, spool)
    after, after_bytes = count_objects(admin)
    destroy(admin, metadata)
    started = time.monotonic()
    restored = run_restore(target, admin, metadata, spool)
    rto = time.monotonic() - started
    back, back_bytes = count_objects(admin)
    shutil.rmtree(spool, ignore_errors=True)
    assert (back, back_bytes) == (after, after_bytes), "the restore did not bring every object back"
    return {
        "label": label, "objects": objects, "bytes": size, "full": full, "same": same, "grown": grown,
        "after": after, "after_bytes": after_bytes, "restored": restored, "rto": rto,
    }  # fmt: skip


def demo_data(workdir: Path) -> dict:
    """``e2e3d demo --keep-stack`` on a stack dir of this run, then the measurements on it."""
    from e2e3d_provider.devstack import stack

    stack_dir = workdir / "demo-stack"
    env = dict(os.environ, E2E3D_STACK_DIR=str(stack_dir), XDG_STATE_HOME=str(workdir / "state"))
    cli = Path(sys.executable).parent / "e2e3d"
    started = time.monotonic()
    run = subprocess.run(
        [str(cli), "demo", "--keep-stack", "--dir", str(stack_dir)], cwd="/tmp", env=env, capture_output=True, text=True
    )
    if run.returncode != 0:
        raise SystemExit(f"e2e3d demo failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    print(f"e2e3d demo --keep-stack: {time.monotonic() - started:.0f} s", flush=True)
    saved = dict(os.environ)
    info = stack.read_state(stack_dir)
    try:
        os.environ.update(info.env())
        from e2e3d_provider.hooks.metadata import MetadataHook

        def grow() -> None:  # one more job run recorded: what changes between two demo backups
            MetadataHook().record_job("bench-extra", "20261202T000000Z", "terrain", "running")

        return measure("demo", grow)
    finally:
        stack.stop_stack(stack_dir)
        os.environ.clear()
        os.environ.update(saved)


def bulk_data(jobs: int, file_size: int) -> dict:
    from e2e3d_provider.devstack.bulk_jobs import BulkJob, load_jobs
    from e2e3d_provider.hooks.metadata import MetadataHook
    from e2e3d_provider.hooks.storage import StorageHook

    with bench_environment("durability"):
        admin, metadata = StorageHook("minio_admin"), MetadataHook()
        admin.bootstrap()
        metadata.migrate()
        now = datetime.now(UTC)
        batch = [
            BulkJob(f"bench-{i:05d}", "20261202T000000Z", "succeeded", now - timedelta(minutes=i)) for i in range(jobs)
        ]
        started = time.monotonic()
        load_jobs(admin, metadata, batch, file_size=file_size)
        print(f"loaded {jobs} jobs in {time.monotonic() - started:.1f} s", flush=True)
        extra = max(1, jobs // 100)

        def grow() -> None:
            more = [BulkJob(f"bench-new-{i:05d}", "20261202T000000Z", "succeeded", now) for i in range(extra)]
            load_jobs(admin, metadata, more, file_size=file_size)

        return measure(f"{jobs * 7 // 1000}k" if jobs * 7 >= 1000 else str(jobs * 7), grow)


def report(results: list[dict]) -> None:
    columns = (
        "data", "objects", "bytes", "full backup s (read)", "unchanged s (read)", "+1 % s (read)",
        "incremental / full", "restore s (RTO)", "restored objects/s", "RPO (daily DAG)",
    )  # fmt: skip
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in results:
        full, same, grown, restored = r["full"], r["same"], r["grown"], r["restored"]
        print(
            f"| {r['label']} | {r['objects']:,} | {r['bytes']:,} | {full.seconds:.2f} ({full.read_objects:,}) "
            f"| {same.seconds:.2f} ({same.read_objects:,}) | {grown.seconds:.2f} ({grown.read_objects:,}) "
            f"| {same.seconds / full.seconds:.3f} / {grown.seconds / full.seconds:.3f} "
            f"| {r['rto']:.2f} | {restored.restored_objects / r['rto']:,.0f} "
            f"| 24 h + {grown.seconds:.1f} s |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1430)
    parser.add_argument("--file-size", type=int, default=4096)
    parser.add_argument("--skip-demo", action="store_true")
    args = parser.parse_args()
    results = []
    workdir = Path(tempfile.mkdtemp(prefix="e2e3d-bench-durability-"))
    try:
        if not args.skip_demo:
            results.append(demo_data(workdir))
        results.append(bulk_data(args.jobs, args.file_size))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
