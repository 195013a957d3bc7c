"""``e2e3d jobs`` (the runs, newest first, with filters) and ``e2e3d job ID`` (one job: its status, files,
variants, archive copy and history), from the metadata schema."""

from __future__ import annotations

import argparse
from typing import Any

from e2e3d_provider.commands.data import METADATA_HELP
from e2e3d_provider.commands.output import EXIT_FAILURE, EXIT_OK, Output, add_command, human_bytes
from e2e3d_provider.hooks import DEFAULT_METADATA_CONN_ID
from e2e3d_provider.hooks.metadata_schema import STATUSES

#: the listing's default length, and its bound (MetadataHook.list_jobs reads at most that many rows)
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


def _when(value: Any) -> str:
    """A timestamp to the second, UTC as PostgreSQL returns it; ``-`` when there is none."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else "-" if value is None else str(value)


def _limit(text: str) -> int:
    """``--limit``: 1 to :data:`MAX_LIMIT` (argparse turns the ValueError into a usage error, exit 2)."""
    value = int(text)
    if not 1 <= value <= MAX_LIMIT:
        raise ValueError(text)
    return value


def cmd_jobs(args: argparse.Namespace) -> int:
    from e2e3d_provider.hooks.metadata import MetadataHook

    out = Output.of(args)
    rows = MetadataHook(args.metadata_conn_id).list_jobs(status=args.status, limit=args.limit, dataset=args.dataset)
    out.emit(rows)
    out.table(
        f"{len(rows)} job runs, most recently updated first"
        + (f" (the first {args.limit}; --limit shows more)" if len(rows) == args.limit else ""),
        ("job", "stamp", "dataset", "status", "updated (UTC)", "files", "bytes"),
        [
            (
                r["job_id"],
                r["stamp"],
                r["dataset"],
                r["status"],
                _when(r["updated_at"]),
                r["files"] or 0,
                human_bytes(r["bytes"] or 0),
            )
            for r in rows
        ],
        right=(5, 6),
    )
    return EXIT_OK


def cmd_job(args: argparse.Namespace) -> int:
    from e2e3d_provider.hooks.metadata import MetadataHook

    out = Output.of(args)
    metadata = MetadataHook(args.metadata_conn_id)
    job = metadata.get_job(args.job_id, args.stamp)
    if job is None:
        run = f" run {args.stamp}" if args.stamp else ""
        out.error(f"no job {args.job_id!r}{run} in the metadata schema (e2e3d jobs lists them)")
        return EXIT_FAILURE
    inventory = metadata.job_files(args.job_id, job["stamp"])
    files = [f for f in inventory if not f["role"]]
    variants = [f for f in inventory if f["role"]]
    history = metadata.job_runs(args.job_id)
    out.emit({"job": job, "files": files, "variants": variants, "archive_key": job["archive_key"], "history": history})
    if out.json:
        return EXIT_OK
    out.line(f"job {job['job_id']} run {job['stamp']}: {job['status']}")
    for label, value in (
        ("dataset", job["dataset"]),
        ("created", _when(job["created_at"])),
        ("updated", _when(job["updated_at"])),
        ("started", _when(job["started_at"])),
        ("finished", _when(job["finished_at"])),
        ("results", f"{job['result_bucket']}/{job['result_prefix']}" if job["result_bucket"] else "-"),
        ("manifest", job["manifest_key"] or "-"),
        ("archive", job["archive_key"] or "- (not archived)"),
        ("output removed", _when(job["output_removed_at"])),
        ("files", f"{job['files'] or 0} ({human_bytes(job['bytes'] or 0)})"),
        ("error", job["error"] or "-"),
    ):
        out.line(f"  {label + ':':<16}{value}")
    out.table(
        f"files ({len(files)})",
        ("path", "kind", "size", "sha256"),
        [(f["key"], f["kind"], human_bytes(f["size"]), (f["sha256"] or "-")[:16]) for f in files],
        right=(2,),
    )
    out.table(
        f"variants ({len(variants)})",
        ("path", "role", "of", "level", "size"),
        [
            (
                f["key"],
                f["role"],
                f["source"] or "-",
                f["level"] if f["level"] is not None else "-",
                human_bytes(f["size"]),
            )
            for f in variants
        ],
        right=(4,),
    )
    out.table(
        f"history ({len(history)} runs, newest first)",
        ("stamp", "status", "updated (UTC)", "files", "archive"),
        [(r["stamp"], r["status"], _when(r["updated_at"]), r["files"] or 0, r["archive_key"] or "-") for r in history],
        right=(3,),
    )
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    jobs = add_command(sub, "jobs", "list job runs, most recently updated first", cmd_jobs, json=True)
    jobs.add_argument("--status", choices=STATUSES, help="only runs of this status (default: any)")
    jobs.add_argument("--dataset", help="only runs of this dataset (default: any)")
    jobs.add_argument("--limit", type=_limit, default=DEFAULT_LIMIT, help=f"at most this many runs (1 to {MAX_LIMIT})")
    jobs.add_argument("--metadata-conn-id", default=DEFAULT_METADATA_CONN_ID, help=METADATA_HELP)

    job = add_command(
        sub,
        "job",
        "one job: status, files, variants, archive copy and the history of its runs",
        cmd_job,
        json=True,
        description="One job's run (the latest unless --stamp): its status, files, variants, archive copy and the "
        "history of its runs. Exits 1 when the metadata schema holds no such job.",
    )
    job.add_argument("job_id", help="the job's id")
    job.add_argument("--stamp", help="this run of the job (default: the latest)")
    job.add_argument("--metadata-conn-id", default=DEFAULT_METADATA_CONN_ID, help=METADATA_HELP)
