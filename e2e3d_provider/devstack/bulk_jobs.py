"""Many published jobs at once, as publish makes them, for tests and benchmarks of the control plane.

Each job gets its result files, a manifest (``metadata.json``, with the sizes, sha256s and the ETags
the server answered) and a SUCCESS marker naming that manifest, in ``output`` and, for archived jobs,
the same set in ``archive``; and its PostgreSQL row. The objects go up through the hook's data path
(one parallel upload per stage, manifests before markers), the rows in one statement: thousands of
jobs load in seconds, where :func:`~e2e3d_provider.lifecycle.publish.publish_run` takes a round trip
per step per job.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from e2e3d_provider.core.layout import (
    BUCKET_ARCHIVE,
    BUCKET_OUTPUT,
    MANIFEST_NAME,
    SUCCESS_NAME,
    archive_prefix,
    output_prefix,
)
from e2e3d_provider.core.manifest import FileEntry, Manifest
from e2e3d_provider.hooks.metadata import SCHEMA, MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.publish import success_marker

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
    scratch: Path,
    jobs: Sequence[BulkJob],
    *,
    files: Sequence[str] = RESULT_FILES,
    file_size: int = 256,
) -> None:
    """Publish ``jobs`` (output, and archive where ``archived``) and insert their rows."""
    data_dir, meta_dir = scratch / "data", scratch / "meta"
    data: list[tuple[str, Path]] = []
    for job in jobs:
        for rel in files:
            path = data_dir / job.job_id / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(file_size))
            data.append((output_prefix(job.job_id) + rel, path))
    sent = storage.upload_dir(data_dir, BUCKET_OUTPUT, "", files=data)
    manifests: list[tuple[str, Path]] = []
    markers: list[tuple[str, Path]] = []
    totals: dict[str, tuple[int, int]] = {}
    for job in jobs:
        prefix = output_prefix(job.job_id)
        manifest = Manifest(job.job_id, job.stamp, [FileEntry(rel, *sent.checksums[prefix + rel]) for rel in files])
        body = manifest.to_json().encode()
        folder = meta_dir / job.job_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MANIFEST_NAME).write_bytes(body)
        (folder / SUCCESS_NAME).write_bytes(success_marker(manifest, hashlib.sha256(body).hexdigest()))
        manifests.append((prefix + MANIFEST_NAME, folder / MANIFEST_NAME))
        markers.append((prefix + SUCCESS_NAME, folder / SUCCESS_NAME))
        totals[job.job_id] = (len(manifest.files), manifest.total_bytes)
    storage.upload_dir(meta_dir, BUCKET_OUTPUT, "", files=manifests)
    storage.upload_dir(meta_dir, BUCKET_OUTPUT, "", files=markers)  # SUCCESS last, as publish does
    archived = [job for job in jobs if job.archived]
    if archived:

        def in_archive(items: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
            stamps = {job.job_id: job.stamp for job in archived}
            return [
                (archive_prefix(job_id, stamps[job_id]) + key.split("/", 1)[1], path)
                for key, path in items
                if (job_id := key.split("/", 1)[0]) in stamps
            ]

        storage.upload_dir(data_dir, BUCKET_ARCHIVE, "", files=in_archive(data) + in_archive(manifests))
        storage.upload_dir(meta_dir, BUCKET_ARCHIVE, "", files=in_archive(markers))
    metadata.migrate()
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
