"""The durability commands: ``backup``, ``restore`` and ``scrub``."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from e2e3d_provider.commands.data import METADATA_HELP, quiet_logs
from e2e3d_provider.commands.output import EXIT_FAILURE, EXIT_OK, Output, add_command
from e2e3d_provider.hooks import DEFAULT_BACKUP_CONN_ID, DEFAULT_METADATA_CONN_ID, ROLE_CONN_IDS


def _spool(args: argparse.Namespace) -> Path:
    return Path(args.spool) if args.spool else Path(tempfile.gettempdir())


def _backup_target(args: argparse.Namespace) -> Any:
    from e2e3d_provider.hooks.storage import StorageHook
    from e2e3d_provider.lifecycle.durability.backup import BackupTarget

    return BackupTarget.from_hook(StorageHook(args.backup_conn_id))


def cmd_backup(args: argparse.Namespace) -> int:
    from e2e3d_provider.hooks.metadata import MetadataHook
    from e2e3d_provider.hooks.storage import StorageHook
    from e2e3d_provider.lifecycle.durability.backup import run_backup

    out = Output.of(args)
    target = _backup_target(args)
    if args.list:
        rows = []
        for backup_id in target.complete_ids():
            snap = target.snapshot(backup_id)
            figures = {"covers_until": snap.covers_until, "objects": snap.objects, "bytes": snap.bytes}
            rows.append({"backup_id": backup_id, **figures})
        out.emit(rows)
        out.table(
            "complete backups",
            ("backup", "covers until", "objects", "bytes"),
            [(r["backup_id"], r["covers_until"], r["objects"], r["bytes"]) for r in rows],
            right=(2, 3),
        )
        return EXIT_OK
    with quiet_logs("backup", out):
        done = run_backup(StorageHook(args.minio_conn_id), target, MetadataHook(args.metadata_conn_id), _spool(args))
    out.emit({k: v for k, v in done.__dict__.items()})
    out.line(
        f"backup {done.backup_id} complete at {done.target}: {done.objects} objects ({done.bytes} bytes) and the "
        f"metadata schema as of {done.covers_until}; sent {done.sent_objects} new contents ({done.sent_bytes} bytes), "
        f"read {done.read_objects} objects, in {done.seconds:.1f} s"
    )
    for key in done.damaged:
        out.warn(f"WARNING: {key} does not match its manifest and was not backed up (run `e2e3d scrub`)")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from e2e3d_provider.hooks.metadata import MetadataHook
    from e2e3d_provider.hooks.storage import StorageHook
    from e2e3d_provider.lifecycle.durability.restore import run_restore

    out = Output.of(args)
    with quiet_logs("restore", out):
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
            dry_run=args.dry_run,
        )
    out.emit({**done.to_dict(), "row_conflicts": done.row_conflicts, "dry_run": args.dry_run})
    rows = ", ".join(f"{t} +{r['restored']}" for t, r in done.rows.items() if r["restored"]) or "none"
    if args.dry_run:
        out.line(
            f"dry run: from backup {done.backup_id} (covers {done.covers_until}) {done.restored_objects} objects "
            f"({done.restored_bytes} bytes) would be brought back, {done.identical_objects} are there already, "
            f"{len(done.replaced)} would be replaced; rows: {rows}; nothing was written"
        )
    else:
        out.line(
            f"restored from backup {done.backup_id} (covers {done.covers_until}): {done.restored_objects} objects "
            f"({done.restored_bytes} bytes) brought back, {done.identical_objects} already there; rows: {rows}; "
            f"{done.seconds:.1f} s"
        )
        if done.replaced:
            out.line(f"replaced {len(done.replaced)} differing objects (the old ones stay as noncurrent versions)")
    for withheld in done.withheld[:20]:
        out.warn(f"SUCCESS not restored: {withheld}")
    if done.conflicts or done.row_conflicts or done.withheld:
        for key in done.conflicts[:20]:
            out.warn(f"differs, kept: {key}")
        out.warn(
            f"e2e3d: {len(done.conflicts)} objects and {done.row_conflicts} rows exist and differ from the backup; "
            f"they {'would be' if args.dry_run else 'were'} left as they are ({len(done.withheld)} SUCCESS markers "
            "withheld over them). Rerun with --overwrite to replace them (--only objects keeps the live rows)."
        )
        return EXIT_FAILURE
    return EXIT_OK


def cmd_scrub(args: argparse.Namespace) -> int:
    from e2e3d_provider.hooks.metadata import MetadataHook
    from e2e3d_provider.hooks.storage import StorageHook
    from e2e3d_provider.lifecycle.durability.backup import BackupTarget
    from e2e3d_provider.lifecycle.durability.scrub import scrub

    out = Output.of(args)
    target = BackupTarget.optional(args.backup_conn_id)
    with quiet_logs("scrub", out):
        done = scrub(
            StorageHook(args.minio_conn_id),
            MetadataHook(args.metadata_conn_id),
            _spool(args),
            backup=target,
            job_id=args.job,
            max_bytes=args.max_bytes,
            repair=not args.dry_run,
        )
    out.emit({**done.to_xcom(), "findings": done.findings, "dry_run": args.dry_run})
    for f in done.findings:
        if args.dry_run:
            fixed = f"repairable from {f['repairable_from']}" if f.get("repairable_from") else "no repair found"
        else:
            fixed = f"repaired from {f['repaired_from']}" if f["repaired_from"] else "NOT repaired"
        out.line(f"{f['bucket']}/{f['key']}: {f['problem']}, {fixed}")
    out.line(
        f"{'dry run (verify only, nothing written): ' if args.dry_run else ''}scrubbed {done.runs} runs, "
        f"{done.files} files, {done.bytes_read} bytes read: {len(done.findings)} findings, {done.repaired} repaired, "
        f"{len(done.damaged)} jobs damaged"
        + ("" if done.complete_pass else " (byte bound reached: the next scrub carries on from here)")
    )
    for job in done.damaged:
        if args.dry_run:
            out.warn(f"DAMAGED: job {job} has files that nothing could repair; a scrub would withdraw its SUCCESS")
        else:
            out.warn(f"DAMAGED: job {job} lost its SUCCESS marker; restore it (e2e3d restore --job {job}) or rerun it")
    return EXIT_FAILURE if done.damaged else EXIT_OK


def _durability_arguments(parser: argparse.ArgumentParser, role: str, what: str) -> None:
    """The connections and spool folder of backup, restore and scrub."""
    parser.add_argument("--minio-conn-id", default=ROLE_CONN_IDS[role], help=f"the live storage connection: {what}")
    parser.add_argument("--backup-conn-id", default=DEFAULT_BACKUP_CONN_ID, help="the backup target's connection")
    parser.add_argument("--metadata-conn-id", default=DEFAULT_METADATA_CONN_ID, help=METADATA_HELP)
    parser.add_argument("--spool", help="local folder for objects in passage (default: the temp dir)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    backup = add_command(
        sub, "backup", "back up the metadata schema and the buckets to the backup target", cmd_backup, json=True
    )
    backup.add_argument("--list", action="store_true", help="list the complete backups instead")
    _durability_arguments(backup, "maintenance", "reads the live buckets")

    restore = add_command(
        sub,
        "restore",
        "bring back missing objects and rows from a backup (existing ones are never replaced)",
        cmd_restore,
        json=True,
        dry_run=True,
        description="Bring back missing objects and rows from a backup. Objects and rows that exist and differ are "
        "conflicts, kept as they are (exit 1) unless --overwrite.",
    )
    restore.add_argument("--backup", help="the backup id (default: the latest complete one; see backup --list)")
    restore.add_argument("--job", help="only this job's results, archive copies and rows (default: everything)")
    restore.add_argument("--overwrite", action="store_true", help="also replace objects and rows that differ")
    restore.add_argument(
        "--only",
        choices=["objects", "schema"],
        help="only the buckets' objects (the schema was not lost), or only the schema (default: both)",
    )
    _durability_arguments(restore, "admin", "writes the live buckets (creating missing ones)")

    scrub = add_command(
        sub,
        "scrub",
        "re-read published results against their manifests and repair them from versions/archive/backup",
        cmd_scrub,
        json=True,
        dry_run=True,
        description="Re-read published results against their manifests and repair them from an earlier version, "
        "the archive copy or the backup. Exits 1 when a job is damaged. --dry-run only verifies.",
    )
    scrub.add_argument("--job", help="only this job (default: every published job)")
    scrub.add_argument(
        "--max-bytes", type=int, help="a rolling scrub: stop after reading this many bytes (default: no bound)"
    )
    _durability_arguments(scrub, "maintenance", "reads results, writes repairs")
