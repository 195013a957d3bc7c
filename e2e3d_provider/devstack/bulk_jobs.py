"""Many published jobs at once, as publish makes them, for tests and benchmarks of the control plane.

Each job gets its result files, a manifest (``metadata.json``, with the sizes, sha256s and the ETags
the server answered) and a SUCCESS marker naming that manifest, in ``output`` and, for archived jobs,
the same set in ``archive``; and its PostgreSQL row. The objects go up from memory over the hook's
object store client, 64 in flight, each checked against the ETag the server answers (one parallel upload
per stage, manifests before markers), the rows in one statement: thousands of
jobs load in seconds, where :func:`~e2e3d_provider.lifecycle.results.publish.publish_run` takes a round trip
per step per job.

The kept storage figures (:mod:`e2e3d_provider.core.usage`) follow, as every writer of the provider keeps them:
by default the loader stores the totals it computes from what it wrote (each job's units held nothing before:
the loader is for new job ids), or, with ``usage="counted"``, a listing of each unit it wrote (exact whatever
the units held, one listing per unit: slower).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from e2e3d_provider.core import event_loop, object_io
from e2e3d_provider.core.layout import (
    BUCKET_ARCHIVE,
    BUCKET_OUTPUT,
    MANIFEST_NAME,
    SUCCESS_NAME,
    archive_prefix,
    output_prefix,
)
from e2e3d_provider.core.manifest import FileEntry, Manifest
from e2e3d_provider.core.marker import SuccessMarker
from e2e3d_provider.core.usage import UsageCounts, unit_of, zero
from e2e3d_provider.hooks.metadata import SCHEMA, MetadataHook, store_usage
from e2e3d_provider.hooks.storage import StorageHook

#: objects in flight at once while loading
IN_FLIGHT = 64

#: a job's result files: mesh, material, texture, point cloud, log (with the manifest and SUCCESS: 7 objects)
RESULT_FILES = ("mesh/model.obj", "mesh/model.mtl", "texture/albedo.png", "pointcloud/points.ply", "logs/run.log")


@dataclass(frozen=True)
class BulkJob:
    """One job to load: its id, run stamp, status and when it finished."""

    job_id: str
    stamp: str
    status: str
    finished_at: datetime
    archived: bool = False


def load_jobs(
    storage: StorageHook,
    metadata: MetadataHook,
    jobs: Sequence[BulkJob],
    *,
    files: Sequence[str] = RESULT_FILES,
    file_size: int = 256,
    usage: Literal["computed", "counted", "none"] = "computed",
) -> None:
    """Publish ``jobs`` (output, and archive where ``archived``) and insert their rows, with the totals of the
    units written (``usage``: ``computed`` from the bodies, for new job ids; ``counted`` by listing each unit;
    ``none`` leaves the kept figures behind, as a write from outside the provider would)."""
    if usage not in ("computed", "counted", "none"):
        raise ValueError(f"unknown usage {usage!r}: choose computed, counted or none")
    written = UsageCounts()
    bodies = {(job.job_id, rel): os.urandom(file_size) for job in jobs for rel in files}
    etags = _put_all(
        storage, BUCKET_OUTPUT, {output_prefix(j) + rel: body for (j, rel), body in bodies.items()}, written
    )
    metas: dict[str, tuple[bytes, bytes]] = {}
    totals: dict[str, tuple[int, int]] = {}
    for job in jobs:
        prefix = output_prefix(job.job_id)
        entries = []
        for rel in files:
            body = bodies[(job.job_id, rel)]
            entries.append(FileEntry(rel, len(body), hashlib.sha256(body).hexdigest(), etags[prefix + rel]))
        manifest = Manifest(job.job_id, job.stamp, entries)
        body = manifest.to_json().encode()
        metas[job.job_id] = (body, SuccessMarker.of(manifest, hashlib.sha256(body).hexdigest()).body)
        totals[job.job_id] = (len(manifest.files), manifest.total_bytes)
    _put_all(storage, BUCKET_OUTPUT, {output_prefix(j) + MANIFEST_NAME: m for j, (m, _) in metas.items()}, written)
    _put_all(storage, BUCKET_OUTPUT, {output_prefix(j) + SUCCESS_NAME: s for j, (_, s) in metas.items()}, written)
    archived = [job for job in jobs if job.archived]
    if archived:  # the same set in the archive, SUCCESS last
        where = {job.job_id: archive_prefix(job.job_id, job.stamp) for job in archived}
        _put_all(
            storage,
            BUCKET_ARCHIVE,
            {where[j] + rel: body for (j, rel), body in bodies.items() if j in where}
            | {where[j] + MANIFEST_NAME: metas[j][0] for j in where},
            written,
        )
        _put_all(storage, BUCKET_ARCHIVE, {where[j] + SUCCESS_NAME: metas[j][1] for j in where}, written)
    metadata.migrate()
    if usage == "counted":  # one listing per unit written, counted now that every object is up
        counts = [storage.count_units(bucket, units) for bucket, units in sorted(written.units.items())]
        written = counts[0] if len(counts) == 1 else counts[0].merge(counts[1])
    with metadata.transaction() as cur:
        cur.execute(
            f"""INSERT INTO {SCHEMA}.jobs (job_id, stamp, dataset, status, started_at, finished_at, updated_at,
                    result_bucket, result_prefix, manifest_key, archive_key, files, bytes)
                SELECT j, s, 'bulk', st, f, f, f, %s, j || '/', j || '/' || %s,
                       CASE WHEN a THEN %s || '/' || j || '/' || j || '_' || s || '/' END, n, b
                FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::boolean[],
                            %s::int[], %s::bigint[]) AS t(j, s, st, f, a, n, b)
                ON CONFLICT (job_id, stamp) DO NOTHING""",
            (
                BUCKET_OUTPUT,
                MANIFEST_NAME,
                BUCKET_ARCHIVE,
                [job.job_id for job in jobs],
                [job.stamp for job in jobs],
                [job.status for job in jobs],
                [job.finished_at for job in jobs],
                [job.archived for job in jobs],
                [totals[job.job_id][0] for job in jobs],
                [totals[job.job_id][1] for job in jobs],
            ),
        )
        if usage != "none":  # in the rows' transaction, as publish records its units
            store_usage(cur, written)


def _put_all(storage: StorageHook, bucket: str, objects: dict[str, bytes], written: UsageCounts) -> dict[str, str]:
    """PUT every object (with its sha256 label, as the data path does) and return key -> ETag; the
    server's ETag must be each body's MD5. Each object is added to ``written`` (its unit's totals, as if
    the unit held nothing before)."""
    store = storage.store(bucket)
    units = written.units.setdefault(bucket, {})
    for key, body in objects.items():
        totals = units.setdefault(unit_of(key), zero())
        for name, value in (("objects", 1), ("bytes", len(body)), ("versions", 1), ("stored_bytes", len(body))):
            totals[name] += value

    async def run() -> dict[str, str]:
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(key: str, body: bytes) -> tuple[str, str]:
            async with gate:
                md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
                sha = hashlib.sha256(body).hexdigest()
                etag = await storage.retry.call_async(
                    lambda: object_io.put_small(store, key, body, sha, md5, {}), f"put {bucket}/{key}"
                )
                return key, etag

        return dict(await asyncio.gather(*(one(key, body) for key, body in objects.items())))

    return event_loop.run(run())
