"""The maintenance control plane at growing numbers of published jobs, on SeaweedFS and MinIO: seconds,
S3 requests, PostgreSQL connections and statements, and peak memory of every operation, in one run; and
whether the storage figures kept as the provider writes (issue 32) still equal a listing of every bucket.

Run:  python -m bench.control_plane [--server seaweedfs|minio|both] [--sizes 100,10000,100000]
                                    [--archive-budget 30] [--publish 20] [--on-off 30] [--full-count]
                                    [--scanner-speed fastest] [--scan-cycles 20] [--load-usage computed]

For each server and size N a fresh embedded stack gets a small real site first (a dataset ingested by the
CLI, three jobs published by ``publish_job`` + ``record_job_run``, a backup of it all), then N published jobs
(7 objects each: 5 result files, manifest, SUCCESS; labels and PostgreSQL rows as publish makes them,
bulk-loaded by ``e2e3d_provider.devstack.bulk_jobs`` with the exact usage of what it wrote): N/10 succeeded
jobs waiting to be archived, N/10 archived jobs past the retention cutoff (with their archive copies), the
rest archived and recent. Then, in order:

  stats route            GET /api/storage/stats (median of 20; FastAPI in process, auth left out): bucket_usage
  results route          GET /api/job/{id}/results (median of 20)
  the mixed workload, every step through the provider's own code paths:
    publish+record xK    K jobs published from a run folder (publish_job) and recorded (record_job_run)
    archive_and_record   K of them archived and recorded
    apply_retention      removal of the N/10 eligible jobs from output (jobs/s)
    archive_completed    the sweep over the N/10 backlog, for at most --archive-budget seconds (jobs/s)
    scrub repair         a result overwritten from outside, repaired from its earlier version
    restore job          a result removed from outside, restored from the backup (one job)
  full listing           every version of every bucket listed by the minio client (not the provider's code)
                         and compared with bucket_usage: the difference per bucket in objects and bytes
  reconcile usage-api    reconcile_usage(method="usage-api"), MinIO only: its figures come from its scanner, so
                         the bench's MinIO scans at --scanner-speed (fastest) and the bench first waits for
                         --scan-cycles (20) saves of the report after the last write (the wait printed apart)
  reconcile listing      reconcile_usage(method="listing")
  publish ON / OFF       publish_job of --on-off small jobs with the usage recount, and as many with
                         StorageHook.recount_touched / count_units and empty record_usage patched to no-ops
                         (this bench only), alternating in blocks of 5: the ratio ON/OFF
  statistics(output)     (--full-count only) StorageHook.statistics of the output bucket: the old full count

S3 requests are counted at urllib3 (the hook's minio client; the obstore data path of the loader and the
transfers is not counted), PostgreSQL connections and statements at MetadataHook; peak RSS is VmHWM (reset
before each operation) minus the RSS before it. Targets at 100,000 jobs: stats route <= 100 ms; the kept
figures equal the listing (difference 0); reconciliation by usage API <= 60 s and <= 100 MB (the listing's
time reported); retention of 10,000 eligible jobs <= 60 s; archive >= 20 jobs/s; publish with the counters
no slower than without. Never a test assertion.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
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
WORK_STAMP = "20260101T000000Z"
NOW = datetime.now(UTC)
SERVERS = ("seaweedfs", "minio")
#: the result files of a job the bench publishes for real (relpath -> size)
RUN_FILES = {"mesh/model.obj": 600, "texture/albedo.png": 2048, "pointcloud/points.ply": 1024}


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

            def executemany(self, *args: Any, **kwargs: Any) -> Any:
                counters.pg_statements += 1
                return self._cursor.executemany(*args, **kwargs)

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

            def __setattr__(self, name: str, value: Any) -> None:  # ``conn.autocommit = True`` reaches the conn
                if name == "_conn":
                    object.__setattr__(self, name, value)
                else:
                    setattr(self._conn, name, value)

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
    """Run ``func`` ``repeat`` times: median seconds, requests and statements per run, peak RSS growth."""
    counters = Counters()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = rss_mb("VmRSS")
    times = []
    with counters.installed():
        for _ in range(repeat):
            started = time.perf_counter()
            outcome = func()
            times.append(time.perf_counter() - started)
    row = {
        "operation": name,
        "seconds": statistics.median(times),
        "s3": counters.s3 // repeat,
        "pg_conn": counters.pg_connections // repeat,
        "pg_stmt": counters.pg_statements // repeat,
        "rss_mb": max(0.0, rss_mb("VmHWM") - before),
        "outcome": outcome,
    }
    print(f"  {name:<22}{row['seconds']:>10.3f} s  {short(outcome)}", flush=True)
    return row


def reconciled(outcome: dict[str, Any]) -> dict[str, Any]:
    """A reconcile_usage summary (bucket -> method -> result) in a table cell: whether every bucket was
    comparable (usage API) or walked whole (listing), the units checked, and each nonzero drift."""
    results = [result for methods in outcome.values() for result in methods.values()]
    cell: dict[str, Any] = {}
    if any("comparable" in r for r in results):
        cell["comparable"] = all(r.get("comparable") for r in results if "comparable" in r)
    if any("units_checked" in r for r in results):
        cell["complete"] = all(r.get("complete") for r in results if "units_checked" in r)
        cell["units"] = sum(r.get("units_checked", 0) for r in results)
    drift = {
        f"{bucket}/{method}": {k: v for k, v in (r.get("delta") or {}).items() if v}
        for bucket, methods in outcome.items()
        for method, r in methods.items()
        if any((r.get("delta") or {}).values())
    }
    reasons = {r["reason"] for r in results if r.get("reason")}
    return cell | {"drift": drift or 0} | ({"reasons": sorted(reasons)} if reasons else {})


def short(outcome: Any) -> Any:
    """The parts of an outcome worth a table cell."""
    if isinstance(outcome, dict) and outcome and all(isinstance(v, dict) and v.keys() <= {"usage_api", "listing"}
                                                     for v in outcome.values()):  # fmt: skip
        return reconciled(outcome)
    if isinstance(outcome, dict):
        keep = ("archived", "removed", "complete", "waiting", "drift", "drift_objects", "drift_bytes", "method")
        keep += ("units_checked", "buckets", "error", "skipped", "restored_objects", "repaired", "objects")
        return {k: v for k, v in outcome.items() if k in keep}
    return outcome


def listed(storage: Any, bucket: str) -> dict[str, int]:
    """What ``bucket`` holds by a listing of every version (the minio client's, not the provider's counter)."""
    from e2e3d_provider.core.listing import COUNT_FIELDS

    totals = dict.fromkeys(COUNT_FIELDS, 0)
    if not storage.client.bucket_exists(bucket):
        return totals
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


def png(seed: int, size: int = 48) -> bytes:
    """A small PNG whose bytes depend on ``seed`` (an image the ingest accepts)."""
    import hashlib

    from PIL import Image

    img = Image.frombytes(
        "RGB", (size, size), hashlib.sha256(str(seed).encode()).digest() * (size * size * 3 // 32 + 1)
    )
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def run_folder(root: Path, job_id: str) -> Path:
    """A finished run's result folder (random bytes: no two jobs share a blob)."""
    run = root / job_id
    for rel, size in RUN_FILES.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(os.urandom(size))
    return run


@contextlib.contextmanager
def counters_off() -> Iterator[None]:
    """The publish path as before the kept figures: its one listing a plain ListObjectsV2, no recount of
    the touched units, nothing stored (bench only: a monkeypatch of the classes, undone on exit)."""
    from e2e3d_provider.core.usage import UsageCounts
    from e2e3d_provider.hooks.metadata import MetadataHook
    from e2e3d_provider.hooks.storage import StorageHook

    saved = (StorageHook.recount_touched, StorageHook.count_units, MetadataHook.record_usage, StorageHook.versions_kept)
    real_record = MetadataHook.record_usage

    def recount(self: StorageHook) -> UsageCounts:
        self.take_touched()
        return UsageCounts()

    StorageHook.recount_touched = recount  # type: ignore[method-assign]
    StorageHook.count_units = lambda self, bucket, units: UsageCounts()  # type: ignore[method-assign]
    StorageHook.versions_kept = lambda self, bucket: False  # type: ignore[method-assign]  # publish's plain listing
    MetadataHook.record_usage = lambda self, counts, **kw: real_record(self, counts, **kw) if counts else 0  # type: ignore[method-assign]
    try:
        yield
    finally:
        (StorageHook.recount_touched, StorageHook.count_units, MetadataHook.record_usage, StorageHook.versions_kept) = (
            saved  # type: ignore[method-assign]
        )


def wait_for_scan(storage: Any, metadata: Any, timeout: float, cycles: int) -> float | None:
    """Wait until MinIO's usage report was saved after the last change of the kept figures (the usage-API
    reconciliation compares only then), and then for ``cycles - 1`` more saves (a report saved after a write
    may still miss it); returns the seconds waited, None when the report never did."""
    from datetime import datetime

    if not hasattr(storage, "data_usage"):
        return None
    last_write = max(row["updated_at"] for row in metadata.bucket_usage())
    started, seen = time.perf_counter(), []
    while time.perf_counter() - started < timeout:
        text = (storage.data_usage() or {}).get("lastUpdate") or ""
        if text and datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00") > last_write and text not in seen:
            seen.append(text)
            if len(seen) >= cycles:
                waited = time.perf_counter() - started
                print(f"  MinIO's usage report: {len(seen)} save(s) after the last write, {waited:.1f}s ({text})")
                return waited
        time.sleep(0.5)
    print(f"  MinIO's usage report did not catch up within {timeout:.0f}s", flush=True)
    return None


def run_size(server: str, n: int, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every operation at ``n`` jobs on ``server``; returns the rows and the extras (load time, listing
    differences, publish ON/OFF)."""
    if server == "minio" and args.scanner_speed:  # the stack's MinIO inherits it (bench_environment restores)
        os.environ["MINIO_SCANNER_SPEED"] = args.scanner_speed
    try:
        return _run_size(server, n, args)
    finally:
        os.environ.pop("MINIO_SCANNER_SPEED", None)


def _run_size(server: str, n: int, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    with bench_environment(f"control-{server}-{n}", server=server) as base:
        from fastapi.testclient import TestClient

        from e2e3d_provider import cli
        from e2e3d_provider.api.app import create_app
        from e2e3d_provider.api.auth import authorized_user
        from e2e3d_provider.core.layout import DEFAULT_BUCKETS, output_prefix
        from e2e3d_provider.core.listing import COUNT_FIELDS
        from e2e3d_provider.devstack.bulk_jobs import BulkJob, load_jobs
        from e2e3d_provider.hooks import DEFAULT_BACKUP_CONN_ID, DEFAULT_METADATA_CONN_ID
        from e2e3d_provider.hooks.metadata import MetadataHook
        from e2e3d_provider.hooks.storage import StorageHook
        from e2e3d_provider.lifecycle.durability.archive import archive_and_record, archive_completed
        from e2e3d_provider.lifecycle.durability.backup import BackupTarget, run_backup
        from e2e3d_provider.lifecycle.durability.restore import run_restore
        from e2e3d_provider.lifecycle.durability.retention import apply_retention
        from e2e3d_provider.lifecycle.durability.scrub import scrub
        from e2e3d_provider.lifecycle.results.publish import publish_job
        from e2e3d_provider.lifecycle.results.record import record_job_run

        try:
            from e2e3d_provider.lifecycle.maintenance.usage import reconcile_usage
        except ImportError:
            reconcile_usage = None

        print(f"\n== {server}, N={n}", flush=True)
        extras: dict[str, Any] = {}
        storage, metadata = StorageHook(BENCH_CONN_ID), MetadataHook()
        storage.bootstrap()
        metadata.migrate()
        target = BackupTarget.from_hook(StorageHook(DEFAULT_BACKUP_CONN_ID))
        spool, runs = base / "spool", base / "runs"
        spool.mkdir()

        def hook() -> StorageHook:
            """A hook of its own per step, as each task or command has."""
            return StorageHook(BENCH_CONN_ID)

        def publish(job_id: str) -> None:
            metadata.record_job(job_id, WORK_STAMP, "bench-set", "running")
            publish_job(hook(), metadata, job_id, WORK_STAMP, run_dir=run_folder(runs, job_id))
            record_job_run(metadata, hook(), job_id, WORK_STAMP, "bench-set", "succeeded")

        # a small real site first, and its backup (a backup after the bulk load would copy every object)
        started = time.perf_counter()
        images = base / "images"
        images.mkdir()
        for seed in range(3):
            (images / f"img_{seed:04d}.png").write_bytes(png(seed))
        ingest = ["ingest", str(images), "--dataset", "bench-set", "--minio-conn-id", BENCH_CONN_ID]
        if cli.main([*ingest, "--metadata-conn-id", DEFAULT_METADATA_CONN_ID]) != 0:
            raise RuntimeError("the ingest of the bench's dataset failed")
        for job in ("site-a", "site-b", "site-c"):
            publish(job)
        run_backup(hook(), target, metadata, spool)
        print(f"site (ingest, 3 jobs published, backup) in {time.perf_counter() - started:.1f}s", flush=True)

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
            load_jobs(storage, metadata, jobs[start : start + 20_000], usage=args.load_usage)
        extras["load_seconds"] = loaded = time.perf_counter() - started
        objects = len(jobs) * 7 + tenth * 7
        print(f"loaded {len(jobs)} jobs ({objects} objects, usage {args.load_usage}) in {loaded:.1f}s", flush=True)
        if args.load_usage == "computed" and n <= args.count_load_max:  # what the other way would add
            started = time.perf_counter()
            units = {f"{job.job_id}/" for job in jobs}
            storage.count_units("output", units)
            storage.count_units("archive", {f"{job.job_id}/" for job in jobs if job.archived})
            extras["count_units_seconds"] = counted = time.perf_counter() - started
            print(f"  (count_units of every loaded unit, as usage='counted' would: {counted:.1f}s)", flush=True)

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
            measure("stats route", route("/api/storage/stats"), repeat=20),
            measure("results route", route(f"/api/job/{jobs[-1].job_id}/results"), repeat=20),
        ]

        # the mixed workload
        work = [f"wl-{i:03d}" for i in range(args.publish)]

        def publish_all() -> int:
            for job in work:
                publish(job)
            return len(work)

        def archive_some() -> int:
            for job in work:
                archive_and_record(hook(), metadata, job)
            return len(work)

        rows.append(measure(f"publish+record x{len(work)}", publish_all))
        rows.append(measure(f"archive_and_record x{len(work)}", archive_some))
        retention = measure("apply_retention", lambda: apply_retention(hook(), metadata, 30))
        retention["rate"] = retention["outcome"]["removed"] / retention["seconds"]
        archive = measure(
            "archive_completed", lambda: archive_completed(hook(), metadata, time_budget=args.archive_budget)
        )
        archive["rate"] = archive["outcome"]["archived"] / archive["seconds"]
        rows += [retention, archive]

        def scrub_repair() -> dict[str, Any]:
            key = output_prefix("site-c") + "texture/albedo.png"
            size = RUN_FILES["texture/albedo.png"]
            storage.client.put_object("output", key, io.BytesIO(b"x" * size), size)  # damage from outside
            found = scrub(hook(), metadata, spool, job_id="site-c")
            return {"repaired": [(f["problem"], f["repaired_from"]) for f in found.findings]}

        def restore_job() -> dict[str, Any]:
            storage.client.remove_object("output", output_prefix("site-c") + "mesh/model.obj")  # lost outside
            restored = run_restore(target, hook(), metadata, spool, job_id="site-c", schema=False)
            return {"restored_objects": restored.restored_objects}

        rows.append(measure("scrub repair", scrub_repair))
        rows.append(measure("restore job", restore_job))

        def compare() -> dict[str, Any]:
            kept = {r["bucket"]: {f: r[f] for f in COUNT_FIELDS} for r in metadata.bucket_usage()}
            differences = {}
            for bucket in DEFAULT_BUCKETS:
                real = listed(storage, bucket)
                have = kept.get(bucket, dict.fromkeys(COUNT_FIELDS, 0))
                differences[bucket] = {f: have[f] - real[f] for f in COUNT_FIELDS} | {
                    "listed_objects": real["objects"],
                    "listed_bytes": real["bytes"],
                }
            return {"objects": sum(d["listed_objects"] for d in differences.values()), "differences": differences}

        listing = measure("full listing", compare)
        rows.append(listing)
        extras["differences"] = listing["outcome"]["differences"]
        print("  kept - listed, per bucket (objects, bytes; versions, stored bytes, delete markers):")
        for bucket, d in extras["differences"].items():
            print(
                f"    {bucket:<8} objects {d['objects']:+d}  bytes {d['bytes']:+d}  (versions {d['versions']:+d}, "
                f"stored {d['stored_bytes']:+d}, markers {d['delete_markers']:+d}; listed {d['listed_objects']} "
                f"objects, {d['listed_bytes']} bytes)",
                flush=True,
            )

        methods = (["usage-api"] if server == "minio" else []) + ["listing"]
        for method in methods:
            if reconcile_usage is None:
                print(f"  reconcile {method}: reconcile_usage is not in this tree", flush=True)
                continue
            if method == "usage-api":
                extras["scan_wait_seconds"] = wait_for_scan(storage, metadata, args.scan_wait, args.scan_cycles)

            def reconcile(method: str = method) -> Any:
                try:
                    return reconcile_usage(hook(), metadata, method=method)
                except Exception as err:  # a bench reports, never stops at a method it cannot run
                    return {"error": f"{type(err).__name__}: {err}"}

            rows.append(measure(f"reconcile {method}", reconcile))

        # publish with the counters ON and OFF, alternating in blocks of 5 (same stack, same minute)
        seconds: dict[str, list[float]] = {"on": [], "off": []}
        counted = {"on": Counters(), "off": Counters()}
        for block in range(max(1, args.on_off // 5)):
            for mode in ("on", "off") if block % 2 == 0 else ("off", "on"):  # neither mode always goes first
                for i in range(5):
                    job = f"pub-{mode}-{block:02d}{i}"
                    metadata.record_job(job, WORK_STAMP, "bench-set", "running")
                    folder = run_folder(runs, job)
                    with counters_off() if mode == "off" else contextlib.nullcontext(), counted[mode].installed():
                        started = time.perf_counter()
                        publish_job(hook(), metadata, job, WORK_STAMP, run_dir=folder)
                        seconds[mode].append(time.perf_counter() - started)
                    record_job_run(metadata, hook(), job, WORK_STAMP, "bench-set", "succeeded")
        extras["publish"] = {
            mode: {
                "jobs": len(s),
                "seconds": sum(s),
                "median": statistics.median(s),
                "s3_per_job": counted[mode].s3 / len(s),
                "pg_conn_per_job": counted[mode].pg_connections / len(s),
                "pg_stmt_per_job": counted[mode].pg_statements / len(s),
            }
            for mode, s in seconds.items()
        }
        on, off = extras["publish"]["on"], extras["publish"]["off"]
        extras["publish"]["ratio"] = on["seconds"] / off["seconds"]
        extras["publish"]["ratio_median"] = on["median"] / off["median"]
        print(
            f"  publish_job x{on['jobs']}: counters ON {on['seconds']:.2f}s (median {on['median'] * 1000:.0f} ms), "
            f"OFF {off['seconds']:.2f}s (median {off['median'] * 1000:.0f} ms): ON/OFF "
            f"x{extras['publish']['ratio']:.2f}",
            flush=True,
        )
        for mode in ("on", "off"):
            m = extras["publish"][mode]
            print(
                f"    {mode:<3} per job: {m['s3_per_job']:.1f} S3 requests (minio client), {m['pg_conn_per_job']:.1f} "
                f"PG connections, {m['pg_stmt_per_job']:.1f} PG statements",
                flush=True,
            )

        if args.full_count:
            rows.append(measure("statistics(output)", lambda: storage.statistics("output")["objects"]))
        for row in rows:
            row["n"], row["server"] = n, server
        extras["n"], extras["server"] = n, server
        report(rows, [extras])  # before the stack goes: removing a large MinIO data folder takes minutes
        print(f"(removing the stack of {server}, N={n})", flush=True)
        return rows, extras


def report(rows: list[dict[str, Any]], extras: list[dict[str, Any]]) -> None:
    """The table (size x server x operation), the load, listing and publish lines, and the JSON line."""
    print(
        f"\n{'jobs':>8} {'server':<10}{'operation':<24}{'seconds':>10}{'jobs/s':>9}{'S3 req':>9}{'PG conn':>9}"
        f"{'PG stmt':>9}{'peak MB':>9}  outcome"
    )
    for r in rows:
        rate = f"{r['rate']:.1f}" if "rate" in r else "-"
        outcome = short(r["outcome"])
        if r["operation"] == "full listing":
            outcome = {"listed objects": outcome["objects"]}
        print(
            f"{r['n']:>8} {r['server']:<10}{r['operation']:<24}{r['seconds']:>10.3f}{rate:>9}{r['s3']:>9}"
            f"{r['pg_conn']:>9}{r['pg_stmt']:>9}{r['rss_mb']:>9.1f}  {outcome}"
        )
    print()
    for e in extras:
        worst = {b: (d["objects"], d["bytes"]) for b, d in e["differences"].items()}
        p = e["publish"]
        counted = f", count_units of them {e['count_units_seconds']:.1f}s" if "count_units_seconds" in e else ""
        print(
            f"{e['n']:>8} {e['server']:<10}load {e['load_seconds']:.1f}s{counted}; kept - listed (objects, bytes) "
            f"{worst}; publish ON/OFF x{p['ratio']:.2f} (medians x{p['ratio_median']:.2f})"
            + (f"; waited {e['scan_wait_seconds']:.1f}s for MinIO's scan" if e.get("scan_wait_seconds") else "")
        )
    print(
        "\n"
        + json.dumps(
            {
                "rows": [
                    {k: v for k, v in r.items() if k != "outcome"} | {"outcome": short(r["outcome"])} for r in rows
                ],
                "extras": extras,
            },
            default=str,
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=(*SERVERS, "both"), default="both")
    parser.add_argument("--sizes", default="100,10000,100000")
    parser.add_argument("--archive-budget", type=float, default=30.0)
    parser.add_argument("--publish", type=int, default=20, help="jobs the mixed workload publishes and archives")
    parser.add_argument("--on-off", type=int, default=30, help="jobs published with the counters on (and as many off)")
    parser.add_argument("--load-usage", choices=("computed", "counted"), default="computed")
    parser.add_argument(
        "--count-load-max",
        type=int,
        default=10_000,
        help="up to this size, also time a count_units of every loaded unit (the 'counted' load's extra cost)",
    )
    parser.add_argument(
        "--scanner-speed",
        default="fastest",
        help="MINIO_SCANNER_SPEED of the bench's MinIO (fastest: a scan cycle a second, so its usage report "
        "follows the writes; '' leaves MinIO's default)",
    )
    parser.add_argument(
        "--scan-cycles",
        type=int,
        default=20,
        help="saves of MinIO's usage report after the last write to wait for: at 100 jobs the first and the second "
        "still missed the scrub's and the restore's 3 versions, the 20th had them (MinIO rescans a folder it "
        "thinks unchanged every 16 cycles)",
    )
    parser.add_argument("--scan-wait", type=float, default=600.0, help="seconds to wait for MinIO's usage report")
    parser.add_argument("--full-count", action="store_true", help="also the old full count of the output bucket")
    args = parser.parse_args()
    servers = SERVERS if args.server == "both" else (args.server,)
    rows: list[dict[str, Any]] = []
    extras: list[dict[str, Any]] = []
    for n in (int(x) for x in args.sizes.split(",")):
        for server in servers:
            more, extra = run_size(server, n, args)
            rows += more
            extras.append(extra)
    if len(extras) > 1:  # every size and server together (each was reported as it finished)
        report(rows, extras)
    return 0


if __name__ == "__main__":
    sys.exit(main())
