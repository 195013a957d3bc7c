"""Reading a published run under the commit protocol (DESIGN §4): a set is trusted only when its
SUCCESS marker (:class:`~e2e3d_provider.core.marker.SuccessMarker`) names its manifest, and each file
only when the server still holds it with the size and ETag (or bytes) the manifest recorded.

:func:`locate_published` is the one place that decides where a job's results are read from (its output,
or its archive copy once retention took the output away); the results API and scrub ask it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e3d_provider.core.layout import (
    BUCKET_ARCHIVE,
    BUCKET_OUTPUT,
    MANIFEST_NAME,
    SUCCESS_NAME,
    archive_prefix,
    output_prefix,
)
from e2e3d_provider.core.manifest import Manifest
from e2e3d_provider.core.marker import SuccessMarker
from e2e3d_provider.core.transfer import RemoteObject, TransferResult
from e2e3d_provider.exceptions import ChecksumMismatchError, ManifestError, ObjectNotFoundError, RunMismatchError
from e2e3d_provider.hooks.storage import StorageHook


def verify_remote(
    storage: StorageHook,
    bucket: str,
    prefix: str,
    manifest: Manifest,
    *,
    deep: bool = True,
    listed: dict[str, RemoteObject] | None = None,
    read_on_mismatch: bool = True,
) -> None:
    """Raise ChecksumMismatchError unless every manifest file is stored with its size (one listing) and,
    with ``deep``, its published bytes.

    Deep checks compare the ETag the server reports now with the one recorded in the manifest at
    publish time (cheap: the same listing); where they differ or the manifest has none, the object's
    bytes are read and hashed against the manifest's sha256 (``read_on_mismatch``; without it a
    differing ETag is a mismatch). The object's own ``x-amz-meta-sha256`` label is never trusted.

    A publish compares ETags only (``read_on_mismatch=False``): its upload step hashed each file as it
    was sent and checked the ETag the server answered, so the listing need only show the same ETags.
    The archive and the API read the bytes where ETags differ.
    """
    problems = []
    if listed is None:
        listed = {obj.key: obj for obj in storage.list_objects(bucket, prefix)}
    for entry in manifest.files:
        found = listed.get(prefix + entry.path)
        if found is None:
            problems.append(f"{entry.path}: missing")
        elif found.size != entry.size:
            problems.append(f"{entry.path}: stored size {found.size} != manifest {entry.size}")
        elif deep and not (entry.etag and found.etag == entry.etag):
            if entry.etag and not read_on_mismatch:
                problems.append(f"{entry.path}: stored ETag {found.etag} != {entry.etag} recorded at publish")
                continue
            actual = storage.read_sha256(bucket, prefix + entry.path)
            if actual != entry.sha256:
                problems.append(f"{entry.path}: the stored bytes hash to {actual[:12]}..., not the manifest's sha256")
    if problems:
        raise ChecksumMismatchError(f"{bucket}/{prefix} does not match the manifest: " + "; ".join(problems[:10]))


@dataclass(frozen=True)
class Published:
    """A completed run as read from a bucket: its manifest, and the manifest's and marker's bytes."""

    manifest: Manifest
    manifest_bytes: bytes
    marker_bytes: bytes


def read_published(storage: StorageHook, bucket: str, job_id: str, prefix: str | None = None) -> Published:
    """The published run below ``prefix`` (default ``<job_id>/``); refuses a job without SUCCESS
    (ObjectNotFoundError), whose marker does not name this manifest (ChecksumMismatchError), whose manifest is
    malformed (ManifestError) or another job's (RunMismatchError, a ManifestError)."""
    prefix = prefix if prefix is not None else output_prefix(job_id)
    marker = SuccessMarker.parse(storage.get_bytes(bucket, prefix + SUCCESS_NAME))
    raw = storage.get_bytes(bucket, prefix + MANIFEST_NAME)
    if marker.manifest_sha256 is None:  # every marker publish writes names its manifest
        raise ChecksumMismatchError(
            f"{bucket}/{prefix}{SUCCESS_NAME} names no manifest (no manifest_sha256): it was not written by a publish"
        )
    if not marker.names_manifest(raw):
        raise ChecksumMismatchError(f"{bucket}/{prefix}{MANIFEST_NAME} is not the manifest its SUCCESS marker names")
    try:
        manifest = Manifest.from_json(raw)
    except ManifestError as err:  # say which copy: the output's, or the archive's
        raise ManifestError(f"{bucket}/{prefix}{MANIFEST_NAME}: {err}") from err
    if manifest.job_id != job_id:  # a consistent pair, copied in from another job: not this job's results
        raise RunMismatchError(f"{bucket}/{prefix}{MANIFEST_NAME} belongs to job {manifest.job_id}, not {job_id}")
    return Published(manifest, raw, marker.raw)


def read_published_manifest(storage: StorageHook, bucket: str, job_id: str, prefix: str | None = None) -> Manifest:
    """The manifest of a completed job (:func:`read_published`)."""
    return read_published(storage, bucket, job_id, prefix).manifest


def fetch_published(
    storage: StorageHook, job_id: str, local_dir: str | Path, *, bucket: str = BUCKET_OUTPUT, prefix: str | None = None
) -> TransferResult:
    """Download a completed job's files into ``local_dir``, each verified against its published manifest
    (the one SUCCESS names): a file whose bytes were replaced is refused even if its sha256 label was
    recomputed to match, and local files already holding the right bytes move nothing."""
    prefix = prefix if prefix is not None else output_prefix(job_id)
    manifest = read_published_manifest(storage, bucket, job_id, prefix)
    return storage.download_prefix(bucket, prefix, local_dir, manifest=manifest)


@dataclass(frozen=True)
class Place:
    """Where a published set of a job lives: bucket and key prefix."""

    bucket: str
    prefix: str


def published_places(job: Mapping[str, Any]) -> list[Place]:
    """Where a job's published results are, in the order a reader tries them: its output (unless
    retention took it away, ``output_removed_at``), then its archive copy (once archived). ``job`` is
    the job's row (``job_id``, ``stamp``, ``status``, ``archive_key``, ``output_removed_at``)."""
    job_id, stamp = job["job_id"], job["stamp"]
    places = [] if job.get("output_removed_at") else [Place(BUCKET_OUTPUT, output_prefix(job_id))]
    if job.get("archive_key") or job.get("status") == "archived":
        places.append(Place(BUCKET_ARCHIVE, archive_prefix(job_id, stamp)))
    return places


def locate_published(storage: StorageHook, job: Mapping[str, Any]) -> tuple[Place, Published]:
    """The job's published run as a reader gets it: from the first of :func:`published_places` that holds
    a SUCCESS. ObjectNotFoundError when none does; a set that is there but not whole raises what
    :func:`read_published` raises (ChecksumMismatchError, ManifestError), so damage is never hidden by
    falling through to another copy."""
    for place in published_places(job):
        try:
            return place, read_published(storage, place.bucket, job["job_id"], place.prefix)
        except ObjectNotFoundError:
            continue
    raise ObjectNotFoundError(f"job {job['job_id']!r} has no published results (no SUCCESS marker)")
