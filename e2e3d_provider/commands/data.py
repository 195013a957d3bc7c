"""The data commands: ``bootstrap``, ``ingest``, ``migrate-inputs``, ``fetch`` and ``stats``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from e2e3d_provider.commands.output import EXIT_OK, Output, add_command, human_bytes
from e2e3d_provider.core.layout import BUCKET_INPUT, BUCKET_OUTPUT, DEFAULT_NONCURRENT_DAYS
from e2e3d_provider.hooks import DEFAULT_METADATA_CONN_ID, ROLE_CONN_IDS

METADATA_HELP = "the PostgreSQL connection of the metadata schema"
FIGURES_HELP = "the PostgreSQL connection where the storage figures of what it wrote are kept"


@contextmanager
def quiet_logs(name: str, out: Output) -> Iterator[None]:
    """The process's own output (Airflow's logs, warnings, child processes) goes to
    ``~/.local/state/e2e3d/<name>.log`` for the block, with a rich progress bar on a terminal; the command's
    report stays on stdout. With ``-v`` nothing is redirected; with ``-q`` or ``--json`` no bar is drawn."""
    from e2e3d_provider.core.transfer import watch_progress
    from e2e3d_provider.devstack.console import Console, state_dir

    console = Console(state_dir() / f"{name}.log", quiet=not out.verbose, bar=not (out.quiet or out.json))
    with console, watch_progress(console.progress):
        yield


def keep_usage(storage: Any, metadata_conn_id: str, out: Output) -> None:
    """Store the fresh totals of the storage units a command wrote (the dashboard's figures follow every
    write); with no metadata database reachable it says so and leaves them to the next reconciliation."""
    from e2e3d_provider.hooks.metadata import MetadataHook

    try:
        counts = storage.recount_touched()
        if counts:
            MetadataHook(metadata_conn_id).record_usage(counts)
    except Exception as err:
        out.note(f"note: storage figures not updated ({err}); the next usage reconciliation will")


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from e2e3d_provider.hooks.metadata import MetadataHook
    from e2e3d_provider.hooks.metadata_schema import SCHEMA_VERSION
    from e2e3d_provider.hooks.storage import StorageHook

    out = Output.of(args)
    storage = StorageHook(args.minio_conn_id)
    report: dict[str, Any] = {"dry_run": args.dry_run}
    if args.dry_run:
        from e2e3d_provider.core.layout import DEFAULT_BUCKETS

        states = {b: "exists" if storage.bucket_exists(b) else "would be created" for b in DEFAULT_BUCKETS}
    else:
        states = storage.bootstrap(noncurrent_days=args.noncurrent_days)
    report["buckets"] = states
    for bucket, state in states.items():
        out.line(f"bucket {bucket}: {state}")
    if args.roles and args.dry_run:
        out.line("roles: would be applied on MinIO (users and policies of the role connections)")
    elif args.roles:
        from e2e3d_provider.hooks.storage_roles import backup_user_from_connection, role_keys_from_connections

        admin_key, _ = storage.keys
        keys = role_keys_from_connections(admin_key)
        backup = backup_user_from_connection(storage.endpoint_url, admin_key)
        users = {**keys, **({"backup": backup[:2]} if backup else {})}
        report["roles"] = {}
        for role in storage.apply_roles(keys, backup):
            report["roles"][role] = users[role][0]
            out.line(f"role {role}: MinIO user {users[role][0]} with policy e2e3d-{role}")
    if not args.storage_only:
        metadata = MetadataHook(args.metadata_conn_id)
        if args.dry_run:
            current = metadata.schema_version()
            report["schema_version"] = current
            report["schema_target"] = SCHEMA_VERSION
            out.line(
                f"metadata schema version {current}"
                + (f": would migrate to {SCHEMA_VERSION}" if current < SCHEMA_VERSION else ", up to date")
            )
        else:
            report["schema_version"] = metadata.migrate()
            out.line(f"metadata schema version {report['schema_version']}")
    out.emit(report)
    return EXIT_OK


def cmd_ingest(args: argparse.Namespace) -> int:
    from e2e3d_provider.hooks.storage import StorageHook

    out = Output.of(args)
    storage = StorageHook(args.minio_conn_id)
    if args.dry_run:
        return _ingest_plan(storage, args, out)
    from e2e3d_provider.lifecycle.inputs.ingest import ingest

    with quiet_logs("ingest", out):
        try:
            result = ingest(storage, args.directory, args.dataset, bucket=args.bucket, skip_invalid=args.skip_invalid)
        finally:
            keep_usage(storage, args.metadata_conn_id, out)
    out.emit({"dataset": args.dataset, "bucket": args.bucket, **result.to_dict(), "total_files": result.total_files})
    out.line(
        f"dataset {args.dataset}: {result.total_files} distinct images, {result.files} uploaded "
        f"({result.bytes} bytes), {result.skipped_files} stored already, "
        f"named by {args.bucket}/{args.dataset}/dataset.json"
    )
    return EXIT_OK


def _ingest_plan(storage: Any, args: argparse.Namespace, out: Output) -> int:
    """What ``ingest`` would upload: the folder checked and hashed as ingest does, the stored images asked
    for (one HEAD each); nothing written."""
    from e2e3d_provider.core.layout import validate_id
    from e2e3d_provider.exceptions import InvalidInputError
    from e2e3d_provider.lifecycle.inputs.datasets import hash_images, stored_blobs
    from e2e3d_provider.lifecycle.inputs.ingest import classify

    validate_id(args.dataset, "dataset")
    directory = Path(args.directory)
    if not directory.is_dir():
        raise InvalidInputError(f"{directory} is not a directory")
    images, rejected = classify(directory)
    if rejected and not args.skip_invalid:
        shown = "; ".join(f"{rel}: {reason}" for rel, reason in rejected[:10])
        raise InvalidInputError(f"{len(rejected)} file(s) in {directory} are not images: {shown}")
    hashed = hash_images(images)
    distinct = {image.sha256: image.size for image, _ in hashed}
    stored = stored_blobs(storage, distinct, args.bucket)
    new = {sha: size for sha, size in distinct.items() if sha not in stored}
    plan = {
        "dry_run": True,
        "dataset": args.dataset,
        "bucket": args.bucket,
        "images": len(hashed),
        "distinct": len(distinct),
        "would_upload": len(new),
        "would_upload_bytes": sum(new.values()),
        "stored_already": len(stored),
        "skipped_invalid": [rel for rel, _ in rejected],
    }
    out.emit(plan)
    out.line(
        f"dry run: dataset {args.dataset}: {len(distinct)} distinct images, {len(new)} would be uploaded "
        f"({sum(new.values())} bytes), {len(stored)} stored already; nothing was written"
    )
    return EXIT_OK


def cmd_migrate_inputs(args: argparse.Namespace) -> int:
    from e2e3d_provider.hooks.storage import StorageHook
    from e2e3d_provider.lifecycle.inputs.datasets import adopt_loose, list_datasets, loose_objects

    out = Output.of(args)
    storage = StorageHook(args.minio_conn_id)
    report: list[dict[str, Any]] = []
    try:
        for dataset in args.dataset or list_datasets(storage, args.bucket):
            if args.dry_run:  # the listing adopt_loose starts from, and nothing more
                loose = loose_objects(storage, dataset, args.bucket)
                report.append(
                    {"dataset": dataset, "loose": len(loose), "bytes": sum(o.size for o in loose), "dry_run": True}
                )
                out.line(
                    f"dry run: dataset {dataset}: {len(loose)} loose objects ({sum(o.size for o in loose)} bytes) "
                    "would be adopted (those that are images) and then removed"
                )
                continue
            done = adopt_loose(storage, dataset, args.bucket)
            report.append(
                {
                    "dataset": dataset,
                    "adopted": done.adopted,
                    "new_blobs": done.new_blobs,
                    "bytes": done.bytes,
                    "deduplicated": done.deduplicated,
                    "removed": len(done.removed),
                    "rejected": done.rejected,
                }
            )
            out.line(
                f"dataset {dataset}: {done.adopted} loose images adopted ({done.new_blobs} new blobs, {done.bytes} "
                f"bytes copied server-side; {done.deduplicated} already stored), {len(done.removed)} loose objects "
                "removed"
            )
    finally:
        if not args.dry_run:
            keep_usage(storage, args.metadata_conn_id, out)
    out.emit(report)
    return EXIT_OK


def cmd_fetch(args: argparse.Namespace) -> int:
    from e2e3d_provider.hooks.storage import StorageHook
    from e2e3d_provider.lifecycle.results.published import fetch_published

    out = Output.of(args)
    with quiet_logs("fetch", out):
        result = fetch_published(StorageHook(args.minio_conn_id), args.job_id, args.directory, bucket=args.bucket)
    out.emit({"job_id": args.job_id, "directory": args.directory, **result.to_dict()})
    out.line(
        f"job {args.job_id}: {result.files} files downloaded ({result.bytes} bytes), {result.skipped_files} "
        f"already held the published bytes, into {args.directory}; every file matches the job's manifest"
    )
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    from e2e3d_provider.hooks.metadata import MetadataHook
    from e2e3d_provider.lifecycle.maintenance.dashboard import dashboard_figures

    out = Output.of(args)
    d = dashboard_figures(MetadataHook(args.metadata_conn_id), args.days)
    out.emit(d)
    if out.json:
        return EXIT_OK
    out.line(f"E2E3D storage, last {d['days']:g} days (PostgreSQL)")
    out.table(
        "space per bucket (latest snapshot)",
        ("bucket", "objects", "bytes", "growth/day"),
        [(b, s["objects"][-1], s["bytes"][-1], human_bytes(s["bytes_per_day"])) for b, s in sorted(d["space"].items())],
    )
    out.table(
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
    out.line(
        f"  object storage: {human_bytes(st['bytes'])}, +{human_bytes(st['bytes_per_day'])}/day, capacity {capacity}"
        + (f", full {st['full_at']} ({st['days_left']} days)" if st["full_at"] else "")
    )
    out.table(
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
    out.table(
        "transfers",
        ("direction", "bytes", "best hour MB/s"),
        [(k, sum(s["bytes"]), max(s["mb_per_s"] or [0])) for k, s in sorted(d["throughput"].items())],
    )
    cache = d["cache"]
    out.line(
        f"  cache hit ratio (downloads): {cache['hit_ratio'] if cache['hit_ratio'] is not None else '-'} "
        f"({cache['skipped_bytes']} of {cache['requested_bytes']} bytes already local)"
    )
    errors = [(k, sum(s["errors"])) for k, s in sorted(d["errors"].items())]
    out.table("storage errors", ("operation", "errors"), errors)
    out.table("top jobs by downloads", ("job", "downloads"), [(j["job_id"], j["downloads"]) for j in d["top_jobs"]])
    out.table(
        "top datasets by downloads",
        ("dataset", "downloads"),
        [(j["dataset"], j["downloads"]) for j in d["top_datasets"]],
    )
    out.table(
        "requests by hour (UTC)",
        ("hour", "requests"),
        [(f"{h:02d}", n) for h, n in enumerate(d["requests_by_hour"]) if n],
    )
    out.table(
        "jobs",
        ("status", "jobs", "mean s", "max s"),
        [(j["status"], j["jobs"], j["mean_seconds"] or "-", j["max_seconds"] or "-") for j in d["jobs"]],
    )
    for warning in d["warnings"]:
        out.line(f"\nWARNING: {warning}")
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    boot = add_command(
        sub,
        "bootstrap",
        "create buckets (versioning, lifecycle) and the metadata schema",
        cmd_bootstrap,
        json=True,
        dry_run=True,
    )
    boot.add_argument("--minio-conn-id", default=ROLE_CONN_IDS["admin"], help="the storage connection (admin rights)")
    boot.add_argument("--metadata-conn-id", default=DEFAULT_METADATA_CONN_ID, help=METADATA_HELP)
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

    ing = add_command(
        sub,
        "ingest",
        "upload a local folder of images to the input bucket as a dataset",
        cmd_ingest,
        json=True,
        dry_run=True,
    )
    ing.add_argument("directory", help="the local folder of images (subfolders included)")
    ing.add_argument("--dataset", required=True, help="the dataset's id (letters, digits, '-', '_', '.')")
    ing.add_argument("--bucket", default=BUCKET_INPUT, help="the input bucket")
    ing.add_argument("--minio-conn-id", default=ROLE_CONN_IDS["ingest"], help="the storage connection")
    ing.add_argument("--skip-invalid", action="store_true", help="skip non-image files instead of failing")
    ing.add_argument("--metadata-conn-id", default=DEFAULT_METADATA_CONN_ID, help=FIGURES_HELP)

    stats = add_command(
        sub, "stats", "the storage dashboard's figures as tables (from PostgreSQL)", cmd_stats, json=True
    )
    stats.add_argument("--days", type=float, default=30.0, help="how many days back the figures reach")
    stats.add_argument("--metadata-conn-id", default=DEFAULT_METADATA_CONN_ID, help=METADATA_HELP)

    mig = add_command(
        sub,
        "migrate-inputs",
        "move datasets stored as plain objects into the content-addressed layout (each image stored once)",
        cmd_migrate_inputs,
        json=True,
        dry_run=True,
    )
    mig.add_argument("--dataset", action="append", help="only this dataset (repeatable; default: every dataset)")
    mig.add_argument("--bucket", default=BUCKET_INPUT, help="the input bucket")
    mig.add_argument("--minio-conn-id", default=ROLE_CONN_IDS["ingest"], help="the storage connection")
    mig.add_argument("--metadata-conn-id", default=DEFAULT_METADATA_CONN_ID, help=FIGURES_HELP)

    fetch = add_command(
        sub,
        "fetch",
        "download a completed job's results, each file verified against the job's published manifest",
        cmd_fetch,
        json=True,
    )
    fetch.add_argument("job_id", help="the job whose latest published results are downloaded")
    fetch.add_argument("directory", help="the local folder to download into (files holding the right bytes stay)")
    fetch.add_argument("--bucket", default=BUCKET_OUTPUT, help="the output bucket")
    fetch.add_argument("--minio-conn-id", default=ROLE_CONN_IDS["api"], help="the storage connection")
