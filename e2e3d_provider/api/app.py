"""The E2E3D results API: pre-signed result and upload URLs, storage statistics, health.

Mounted by the Airflow plugin under ``/e2e3d`` (so ``/e2e3d/api/v1/...`` on the api-server). Every
route but ``/api/v1/health`` requires an Airflow JWT with permission on the reconstruction DAG's runs.

The version is in the path: ``/api/v1``. The unversioned paths of before (``/api/job/{id}/...``,
``/api/jobs/by-run``, ``/api/dashboard`` ...) answer ``308 Permanent Redirect`` to their v1 path, which keeps the
method and the body (a POST is repeated as a POST). Every 4xx and 5xx answers one schema,
:class:`~e2e3d_provider.api.errors.ErrorBody` (``status``, a machine-readable ``code``, ``detail``), and the
listings (``GET /jobs``, ``GET /datasets``) page by an opaque keyset cursor (``next_cursor``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import cached_property, partial
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from airflow.configuration import conf
from fastapi import APIRouter, Depends, FastAPI, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from e2e3d_provider import __version__
from e2e3d_provider.api.auth import authorized_user
from e2e3d_provider.api.errors import ApiError, code_of, error_response, errors, standard
from e2e3d_provider.api.limits import BodyLimit, validation_failed
from e2e3d_provider.api.published_files import PublishedFilesCache
from e2e3d_provider.api.scene import scene_of
from e2e3d_provider.api.schemas import (
    BucketUsage,
    CommitRequest,
    CommitResult,
    DatasetList,
    DatasetSummary,
    Health,
    JobList,
    JobResults,
    JobSummary,
    ResultFile,
    ResultGroup,
    Scene,
    StorageStats,
    StoredFile,
    TileURL,
    UploadGrant,
    UploadRequest,
    UploadURL,
)
from e2e3d_provider.core.dataset_manifest import DatasetImage
from e2e3d_provider.core.layout import (
    BUCKET_INPUT,
    ID_PATTERN,
    MESH_RELPATH,
    POINTCLOUD_RELPATH,
    TEXTURE_RELPATH,
    InvalidNameError,
    blob_key,
    input_prefix,
    validate_id,
    validate_relpath,
    validate_sha256,
)
from e2e3d_provider.core.manifest import FileEntry
from e2e3d_provider.core.presign import DEFAULT_PRESIGN_EXPIRY, MAX_PRESIGN_EXPIRY
from e2e3d_provider.core.readiness import IMAGE_SUFFIXES
from e2e3d_provider.core.settings import SECTION, default
from e2e3d_provider.exceptions import (
    ChecksumMismatchError,
    ManifestError,
    MetadataError,
    ObjectNotFoundError,
    RunConflictError,
    StorageError,
    StorageUnreachableError,
)
from e2e3d_provider.hooks import telemetry
from e2e3d_provider.hooks.metadata import MAX_LISTED_JOBS, STATUSES, MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.inputs.datasets import adopt_loose, dataset_view, list_datasets_page, read_dataset
from e2e3d_provider.lifecycle.maintenance.dashboard import dashboard_figures
from e2e3d_provider.lifecycle.results.published import locate_published, verify_remote

log = logging.getLogger(__name__)

DEFAULT_EXPIRY = int(DEFAULT_PRESIGN_EXPIRY.total_seconds())
MAX_EXPIRY = int(MAX_PRESIGN_EXPIRY.total_seconds())
#: the file route's redirects: short-lived (each request gets a fresh URL), at most an hour
FILE_EXPIRY = 300
MAX_FILE_EXPIRY = 3600
#: seconds a browser may reuse a file route's redirect (never longer than half the URL's validity)
FILE_REDIRECT_MAX_AGE = 60


#: Airflow configuration section of the API's settings: ``[e2e3d] minio_conn_id`` and ``metadata_conn_id``
#: (``AIRFLOW__E2E3D__MINIO_CONN_ID`` ...), read when the API first needs a hook, not at import
CONFIG_SECTION = SECTION
#: seconds an API request waits out an outage of object storage or PostgreSQL (a person is waiting for the
#: answer: a 503 soon beats a page that hangs for the workers' two minutes)
RETRY_DEADLINE = 2.0


class Backends:
    """The hooks behind the API, created on first use (never at import or app creation). Connection ids
    given to :func:`create_app` win; otherwise they come from Airflow's configuration at first use."""

    def __init__(self, minio_conn_id: str | None = None, metadata_conn_id: str | None = None) -> None:
        self._minio_conn_id = minio_conn_id
        self._metadata_conn_id = metadata_conn_id

    @property
    def minio_conn_id(self) -> str:
        return self._minio_conn_id or conf.get(CONFIG_SECTION, "minio_conn_id", fallback=default("minio_conn_id"))

    @property
    def metadata_conn_id(self) -> str:
        return self._metadata_conn_id or conf.get(
            CONFIG_SECTION, "metadata_conn_id", fallback=default("metadata_conn_id")
        )

    @property
    def max_upload_bytes(self) -> int:
        """Largest file an upload grant allows: ``[e2e3d] max_upload_bytes``, default 512 MiB."""
        return conf.getint(CONFIG_SECTION, "max_upload_bytes", fallback=default("max_upload_bytes"))

    @cached_property
    def storage(self) -> StorageHook:
        return StorageHook(self.minio_conn_id, retry_deadline=RETRY_DEADLINE)

    @cached_property
    def metadata(self) -> MetadataHook:
        return MetadataHook(self.metadata_conn_id, retry_deadline=RETRY_DEADLINE)

    @cached_property
    def published(self) -> PublishedFilesCache:
        """The file route's memory of each job's published set (checked against its SUCCESS on every hit)."""
        return PublishedFilesCache()


def backends(request: Request) -> Backends:
    return request.app.state.backends


BackendsDep = Annotated[Backends, Depends(backends)]


def checked_id(value: str, kind: str) -> str:
    """Validate an id before anything touches storage: 422 ``invalid_id`` otherwise."""
    try:
        return validate_id(value, kind)
    except InvalidNameError as err:
        raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid_id", str(err)) from None


#: the API's version prefix: a change that breaks clients gets a new one (the old stays, or redirects)
API_PREFIX = "/api/v1"
#: what any authenticated route may answer besides its own errors: no or a bad token, no permission, a bad
#: parameter, a failure of the server, of object storage, or an outage (all as ErrorBody)
protected = APIRouter(
    prefix=API_PREFIX,
    dependencies=[Depends(authorized_user)],
    responses=standard(401, 403, 422, 500, 502, 503),
)
UserDep = Annotated[Any, Depends(authorized_user)]  # the same dependency: FastAPI runs it once a request


def _name(user: Any) -> str | None:
    try:
        return str(user.get_name())
    except Exception:
        return None


public = APIRouter(prefix=API_PREFIX, responses=standard(500))


def served_job(b: Backends, job_id: str) -> dict[str, Any]:
    """The job's row if its results may be served: 404 for an unknown job, 409 for a damaged one."""
    job = b.metadata.get_job(job_id)
    if job is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, "job_not_found", f"unknown job {job_id!r}")
    if job["status"] == "damaged":
        raise ApiError(
            status.HTTP_409_CONFLICT,
            "job_damaged",
            f"job {job_id!r} is damaged: {job.get('error') or 'a scrub found files it could not repair'}. "
            f"Its results are not served; restore them (e2e3d restore --job {job_id}) or rerun the job.",
        )
    return job


@contextmanager
def published_or_409(job: dict[str, Any]) -> Iterator[None]:
    """Reading a job's published set: no SUCCESS, or a set that is there but not whole, answers 409."""
    job_id = job["job_id"]
    try:
        yield
    except ObjectNotFoundError:
        raise ApiError(
            status.HTTP_409_CONFLICT,
            "results_incomplete",
            f"job {job_id!r} is {job['status']}: its results are not complete (no SUCCESS marker)",
        ) from None
    except (ManifestError, ChecksumMismatchError) as err:  # what is stored, not the storage, is wrong
        log.error("results API: %s", err)
        raise ApiError(
            status.HTTP_409_CONFLICT,
            "manifest_invalid",
            f"job {job_id!r}: its stored results are not served: {err}. "
            f"Re-publish the job, or restore it (e2e3d restore --job {job_id}).",
        ) from None


def file_route(request: Request, job_id: str, path: str) -> str:
    """The file route's URL of a published file (:func:`job_file`'s own, path escaped), below the app's mount
    point (``/e2e3d`` under the api-server): relative references inside the file resolve through it too."""
    return _root(request) + str(protected.url_path_for("job_file", job_id=job_id, path=quote(path, safe="/")))


@protected.get(
    "/jobs/{job_id}/results",
    response_model=JobResults,
    tags=["results"],
    operation_id="getJobResults",
    responses=errors(
        e404="unknown job (job_not_found), or no files at the level or variant asked for (variant_not_found)",
        e409="job not complete: no SUCCESS (results_incomplete), damaged: a scrub could not repair it (job_damaged), "
        "or its stored manifest malformed, another job's, or not the one its SUCCESS names (manifest_invalid)",
        e422="malformed job id (invalid_id) or expiry (validation_failed)",
    ),
)
def job_results(
    job_id: str,
    request: Request,
    b: BackendsDep,
    user: UserDep,
    expires: Annotated[
        int, Query(ge=1, le=MAX_EXPIRY, description="seconds the URLs stay valid (max 7 days)")
    ] = DEFAULT_EXPIRY,
    lod: Annotated[
        int | None, Query(ge=0, le=64, description="only this level of detail of each result (0: full resolution)")
    ] = None,
    variant: Annotated[
        Literal["web"] | None, Query(description="only the web variants (GLB meshes, JPEG/WebP textures)")
    ] = None,
) -> JobResults:
    """Status from PostgreSQL and pre-signed URLs for every file of the job's manifest, with each result's
    variants grouped under it; ``?lod=n`` picks level n of every result, ``?variant=web`` the web variants
    (at ``lod``, default 0). A tile index comes with a URL for each of its tiles."""
    job_id = checked_id(job_id, "job_id")
    job = served_job(b, job_id)
    with published_or_409(job):  # its output, or the archive copy once retention took the output away
        place, published = locate_published(b.storage, job)
    bucket, prefix, manifest = place.bucket, place.prefix, published.manifest
    try:  # one listing: every object still the one published (size, and the ETag recorded at publish)
        verify_remote(b.storage, bucket, prefix, manifest, read_on_mismatch=False)
    except ChecksumMismatchError as err:
        log.error("results API: %s", err)
        raise ApiError(
            status.HTTP_409_CONFLICT,
            "manifest_invalid",
            f"job {job_id!r}: its stored results no longer match their manifest; they are not served. "
            "Re-publish the job (or restore it from the archive).",
        ) from None
    ttl = timedelta(seconds=expires)
    levels = sorted({e.level for e in manifest.files if e.level is not None and e.role in ("lod", "web")})
    chosen = manifest.files
    if lod is not None or variant is not None:
        want = lod or 0
        chosen = [e for e in manifest.files if _picked(e, want, variant)]
        if not chosen:
            raise ApiError(
                status.HTTP_404_NOT_FOUND,
                "variant_not_found",
                f"job {job_id!r} has no {variant or 'level-of-detail'} files at level {want} "
                f"(levels: {', '.join(map(str, levels)) or 'none: it was published without right-sizing'})",
            )
    route = partial(file_route, request, job_id)
    files = [_result_file(b.storage, bucket, prefix, e, ttl, manifest.files, route) for e in chosen]
    for f in files:  # the access log: every URL handed out (batched; never fails the request)
        kind = None if f.role in (None, "original", "intermediate") else f"{f.role}{f.level or 0}"
        telemetry.access("download", bucket, f.key, actor=_name(user), job_id=job_id, variant=kind)
        for t in f.tiles or []:
            telemetry.access("download", bucket, t.key, actor=_name(user), job_id=job_id, variant=f"tile{t.level}")
    by_path = {f.path: f.url for f in _result_files_of(files)}
    return JobResults(
        job_id=job_id,
        stamp=manifest.stamp,
        dataset=job["dataset"],
        status=job["status"],
        bucket=bucket,
        prefix=prefix,
        expires_in=expires,
        mesh=by_path.get(MESH_RELPATH),
        texture=by_path.get(TEXTURE_RELPATH),
        pointcloud=by_path.get(POINTCLOUD_RELPATH),
        files=files,
        results=_groups(files, {e.path: e for e in manifest.files}, b.storage, bucket, prefix, ttl, route),
        levels=levels,
        dropped=manifest.dropped,
        statistics=dict(job.get("statistics") or manifest.statistics),
    )


def _picked(entry: FileEntry, level: int, variant: str | None) -> bool:
    """Whether ``?lod=level`` (and ``?variant=``) picks this file: the variants at that level (level 0
    also the originals themselves), or with ``variant=web`` only the web ones."""
    if variant == "web":
        return entry.role == "web" and entry.level == level
    if entry.role == "original":
        return level == 0
    return entry.role in ("lod", "web") and entry.level == level


def _result_files_of(files: list[ResultFile]) -> list[ResultFile]:
    return [f for f in files if f.role in (None, "original")]


def _result_file(
    storage: StorageHook,
    bucket: str,
    prefix: str,
    e: FileEntry,
    ttl: timedelta,
    every: list[FileEntry],
    route: Callable[[str], str],
) -> ResultFile:
    tiles = None
    if e.role == "tile" and (e.figures or {}).get("index"):  # a tile index: its tiles, each with a URL
        folder = e.path.rpartition("/")[0] + "/"
        tiles = [
            TileURL(
                level=t.level or 0,
                row=int(t.figures["row"]),
                col=int(t.figures["col"]),
                width=int(t.figures["width"]),
                height=int(t.figures["height"]),
                key=prefix + t.path,
                url=storage.presigned_get(bucket, prefix + t.path, ttl),
                route=route(t.path),
            )
            for t in every
            if t.role == "tile" and t.path.startswith(folder) and t.figures and "row" in t.figures
        ]
    return ResultFile(
        path=e.path,
        key=prefix + e.path,
        size=e.size,
        sha256=e.sha256,
        url=storage.presigned_get(bucket, prefix + e.path, ttl),
        route=route(e.path),
        kind=e.kind,
        role=e.role,
        source=e.source,
        level=e.level,
        figures=e.figures,
        tiles=tiles,
    )


def _groups(
    files: list[ResultFile],
    entries: dict[str, FileEntry],
    storage: StorageHook,
    bucket: str,
    prefix: str,
    ttl: timedelta,
    route: Callable[[str], str],
) -> list[ResultGroup]:
    """Each original with the listed variants derived from it (an original left out by ``?lod`` is
    still named, with its URL, so a group always says what its variants derive from)."""
    sources = sorted({f.source for f in files if f.source} | {f.path for f in files if f.role == "original"})
    listed = {f.path: f for f in files}
    groups = []
    for source in sources:
        original = listed.get(source)
        if original is None and source in entries:
            original = _result_file(storage, bucket, prefix, entries[source], ttl, [], route)
        if original is not None:
            groups.append(ResultGroup(original=original, variants=[f for f in files if f.source == source]))
    return groups


FILE_ROUTE = "/jobs/{job_id}/files/{path:path}"
FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    307: {
        "description": "to a fresh pre-signed URL of the file on object storage (for HEAD, one signed for HEAD), "
        "valid `expires` seconds; send the request's Range header again there and object storage answers 206",
        "headers": {"Location": {"description": "the pre-signed URL", "schema": {"type": "string"}}},
    },
    **errors(
        e404="unknown job (job_not_found), or a path the job's published manifest does not name (file_not_found)",
        e409="job damaged (job_damaged), not complete: no SUCCESS (results_incomplete), or its stored manifest "
        "malformed, another job's, or not the one its SUCCESS names (manifest_invalid)",
        e422="malformed job id (invalid_id), path: '..', '.', empty segments, absolute (invalid_path), or expiry "
        "(validation_failed)",
    ),
}
FILE_ROUTE_DOC: dict[str, Any] = {
    "tags": ["results"],
    "status_code": 307,
    "response_class": RedirectResponse,
    "responses": FILE_RESPONSES,
}


@protected.get(FILE_ROUTE, operation_id="getJobFile", **FILE_ROUTE_DOC)
@protected.head(FILE_ROUTE, operation_id="headJobFile", **FILE_ROUTE_DOC)
def job_file(
    job_id: str,
    path: str,
    request: Request,
    b: BackendsDep,
    user: UserDep,
    expires: Annotated[
        int, Query(ge=1, le=MAX_FILE_EXPIRY, description="seconds the redirect's URL stays valid (max 1 h)")
    ] = FILE_EXPIRY,
) -> RedirectResponse:
    """One published file of the job, by its path in the run (as the results listing's ``route`` gives it):
    a redirect to a fresh pre-signed URL, so what a file names by a relative path (an MTL's texture, a
    tileset's tiles, a GLB's buffers) resolves through this route too. Range requests pass through the
    redirect; the archive copy is served once retention took the output away. Only the files the published
    manifest names are served (never any other key), and the manifest is remembered per process while the
    job's SUCCESS marker stays the same."""
    job_id = checked_id(job_id, "job_id")
    try:
        path = validate_relpath(path)
    except InvalidNameError as err:
        raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid_path", str(err)) from None
    job = served_job(b, job_id)
    with published_or_409(job):
        published = b.published.lookup(b.storage, job)
    entry = published.files.get(path)
    if entry is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, "file_not_found", f"job {job_id!r} published no file {path!r}")
    bucket, key = published.place.bucket, published.place.prefix + entry.path
    if request.method == "HEAD":
        url = b.storage.presigned_head(bucket, key, expires)
    else:
        url = b.storage.presigned_get(bucket, key, expires)
        variant = None if entry.role in (None, "original", "intermediate") else f"{entry.role}{entry.level or 0}"
        telemetry.access("download", bucket, key, actor=_name(user), job_id=job_id, variant=variant)
    max_age = min(FILE_REDIRECT_MAX_AGE, expires // 2)
    return RedirectResponse(url, status_code=307, headers={"Cache-Control": f"private, max-age={max_age}"})


@protected.get(
    "/jobs/{job_id}/scene",
    response_model=Scene,
    tags=["results"],
    operation_id="getJobScene",
    responses=errors(
        e404="unknown job (job_not_found), or one that published no tileset and no COPC point cloud (nothing_to_view)",
        e409="job damaged (job_damaged), not complete: no SUCCESS (results_incomplete), or its stored manifest "
        "not usable (manifest_invalid)",
        e422="malformed job id (invalid_id)",
    ),
)
def job_scene(job_id: str, request: Request, b: BackendsDep) -> Scene:
    """What a 3D viewer loads of the job: each mesh's 3D Tiles tileset (its root's box and geometric error)
    and each COPC point cloud (its points and octree cube), with the file route of each, from the published
    manifest (remembered as the file route remembers it: one ``HEAD`` of the SUCCESS marker a request)."""
    job_id = checked_id(job_id, "job_id")
    job = served_job(b, job_id)
    with published_or_409(job):
        published = b.published.lookup(b.storage, job)
        scene = scene_of(job_id, job["stamp"], published.files.values(), partial(file_route, request, job_id))
    if not scene.tilesets and not scene.pointclouds:
        raise ApiError(
            status.HTTP_404_NOT_FOUND,
            "nothing_to_view",
            f"job {job_id!r} published nothing a 3D viewer streams (no 3D Tiles tileset, no COPC point cloud): "
            "it was published without right-sizing, or before right-sizing made them (its results listing still "
            "has every file it published); rerun the job with right-sizing on to view it.",
        )
    return scene


def job_summary(job: dict[str, Any]) -> JobSummary:
    owner = job.get("statistics") or {}
    return JobSummary(
        **{k: job[k] for k in JobSummary.model_fields if k in job},
        dag_id=owner.get("dag_id"),
        dag_run_id=owner.get("dag_run_id"),
    )


#: a listing's page size when the request names none
DEFAULT_PAGE = 50
#: the largest page of ``GET /datasets`` (each dataset is one listing entry and one usage row)
MAX_LISTED_DATASETS = 1000


def encode_cursor(values: list[Any]) -> str:
    """An opaque cursor: the keyset of a page's last row, as unpadded base64url of its JSON. Opaque to clients
    (they pass back what ``next_cursor`` gave), and readable by the API alone: it is not signed, since it only
    says where a listing the caller may read anyway resumes."""
    return base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    """The keyset a cursor of :func:`encode_cursor` holds; 422 ``invalid_cursor`` for anything else."""
    try:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,2000}", cursor):
            raise ValueError("not base64url")
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError("not a list of strings")
        return values
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "invalid_cursor",
            "cursor is not one this API handed out: pass back a next_cursor unchanged, or leave it out to start over",
        ) from None


def job_keyset(cursor: str) -> tuple[datetime, str, str]:
    """The ``(updated_at, job_id, stamp)`` a jobs cursor holds."""
    values = decode_cursor(cursor)
    try:
        if len(values) != 3:
            raise ValueError(len(values))
        updated = datetime.fromisoformat(values[0])
        if updated.tzinfo is None:
            raise ValueError("naive time")
        return updated, validate_id(values[1], "job_id"), values[2]
    except (ValueError, InvalidNameError):
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid_cursor", "cursor is not one of GET /jobs"
        ) from None


@protected.get(
    "/jobs",
    response_model=JobList,
    tags=["results"],
    operation_id="listJobs",
    responses=errors(
        e422="unknown status or malformed dataset (invalid_filter), a cursor not handed out here (invalid_cursor), "
        "or a limit out of range (validation_failed)"
    ),
)
def jobs_list(
    b: BackendsDep,
    job_status: Annotated[
        str | None, Query(alias="status", description=f"only jobs whose newest run is: {', '.join(STATUSES)}")
    ] = None,
    dataset: Annotated[str | None, Query(description="only jobs of this dataset")] = None,
    dag_id: Annotated[
        str | None, Query(min_length=1, max_length=250, description="only runs a DAG run of this DAG owns")
    ] = None,
    run_id: Annotated[
        str | None, Query(min_length=1, max_length=250, description="only runs the DAG run of this run id owns")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LISTED_JOBS, description="at most this many jobs a page")] = DEFAULT_PAGE,
    cursor: Annotated[
        str | None, Query(max_length=2000, description="the next_cursor of the previous page (opaque)")
    ] = None,
) -> JobList:
    """Jobs, each once as its newest run (the one the results API serves), most recently updated first; one
    page of at most ``limit``, and ``next_cursor`` to ask for the next (null: this was the last page; a last
    page may also come back empty). Keyset paging (``updated_at, job_id, stamp``): each page is one indexed
    query, however deep the walk; a job updated while a client pages may show up again or move past it.

    ``dag_id`` / ``run_id`` select the runs a DAG run owns (its ``prepare`` task records the run in the job's
    row): the job a task's "View" link opens, even when a later run of the job exists (each owned run is
    listed, not only a job's newest)."""
    if job_status is not None and job_status not in STATUSES:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "invalid_filter",
            f"unknown job status {job_status!r}; use one of {', '.join(STATUSES)}",
        )
    if dataset is not None:
        try:
            dataset = validate_id(dataset, "dataset")
        except InvalidNameError as err:
            raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid_filter", str(err)) from None
    after = job_keyset(cursor) if cursor is not None else None
    by_run = dag_id is not None or run_id is not None
    jobs = b.metadata.list_jobs(
        job_status, limit, dataset=dataset, latest=not by_run, dag_id=dag_id, run_id=run_id, after=after
    )
    last = jobs[-1] if len(jobs) == limit else None
    return JobList(
        jobs=[job_summary(j) for j in jobs],
        next_cursor=encode_cursor([last["updated_at"].isoformat(), last["job_id"], last["stamp"]]) if last else None,
    )


@protected.get(
    "/jobs/{job_id}",
    response_model=JobSummary,
    tags=["results"],
    operation_id="getJob",
    responses=errors(e404="unknown job (job_not_found)", e422="malformed job id (invalid_id)"),
)
def job_get(job_id: str, b: BackendsDep) -> JobSummary:
    """The job's newest run (the one its results, files and scene serve): status, dataset, times, what it
    published, and the DAG run that owns it. Answered from PostgreSQL alone."""
    job = b.metadata.get_job(checked_id(job_id, "job_id"))
    if job is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, "job_not_found", f"unknown job {job_id!r}")
    return job_summary(job)


@protected.get(
    "/datasets",
    response_model=DatasetList,
    tags=["uploads"],
    operation_id="listDatasets",
    responses=errors(
        e422="a prefix that no dataset id could start with (invalid_filter), a cursor not handed out here "
        "(invalid_cursor), or a limit out of range (validation_failed)"
    ),
)
def datasets_list(
    b: BackendsDep,
    prefix: Annotated[str, Query(max_length=128, description="only datasets whose id starts with this")] = "",
    limit: Annotated[
        int, Query(ge=1, le=MAX_LISTED_DATASETS, description="at most this many datasets a page")
    ] = DEFAULT_PAGE,
    cursor: Annotated[
        str | None, Query(max_length=2000, description="the next_cursor of the previous page (opaque)")
    ] = None,
) -> DatasetList:
    """Datasets of the input bucket in the order object storage lists them (by key on S3 and MinIO, where
    ``a-x/`` comes before ``a/``), one page of at most ``limit`` with ``next_cursor`` for the next (null: the
    last page). Each page is one delimiter listing of object
    storage that starts after the previous page's last dataset (never the whole bucket), and one query for
    the figures of each dataset's folder as last counted."""
    if prefix and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", prefix):
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "invalid_filter",
            f"no dataset id starts with {prefix[:40]!r}: ids are letters, digits, '.', '_' and '-', "
            "starting with a letter or digit",
        )
    after = None
    if cursor is not None:
        values = decode_cursor(cursor)
        if len(values) != 1 or not ID_PATTERN.fullmatch(values[0]):
            raise ApiError(
                status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid_cursor", "cursor is not one of GET /datasets"
            )
        after = values[0]
    names, more = list_datasets_page(b.storage, prefix, after, limit)
    counted = b.metadata.usage_rows(BUCKET_INPUT, units=[input_prefix(n) for n in names]) if names else {}
    return DatasetList(
        datasets=[
            DatasetSummary(
                dataset=n,
                objects=(row := counted.get(input_prefix(n)) or {}).get("objects"),
                bytes=row.get("bytes"),
                counted_at=row.get("counted_at"),
            )
            for n in names
        ],
        next_cursor=encode_cursor([names[-1]]) if more and names else None,
    )


@protected.post(
    "/datasets/{dataset}/uploads",
    response_model=UploadGrant,
    tags=["uploads"],
    operation_id="createUploads",
    responses=errors(
        e409="a file of that name is already stored: a grant never replaces one (name_taken)",
        e413="",
        e422="malformed dataset id (invalid_id), file names, types or sizes (upload_refused), or body "
        "(validation_failed)",
    ),
)
def dataset_uploads(dataset: str, body: UploadRequest, b: BackendsDep, user: UserDep) -> UploadGrant:
    """Pre-signed PUT URLs so a client uploads input images straight to object storage.

    Each URL creates one new object of the declared size, once: it signs the server's conditional create
    (``If-None-Match: *``, or the ``If-Match`` form on servers that ignore it; see
    ``StorageHook.create_only_condition``) and the ``Content-Length``, so the server refuses a different
    size, a second use, and any name that is already stored (names stored now are refused here with 409)."""
    dataset = checked_id(dataset, "dataset")
    max_bytes = b.max_upload_bytes
    problems: list[str] = []
    files: dict[str, int] = {}
    declared: dict[str, str] = {}
    prefix = input_prefix(dataset)
    for item in body.files:
        if isinstance(item, str):
            problems.append(f'{item!r}: give each file as {{"name": ..., "bytes": <size>}}; a grant signs the size')
            continue
        try:
            rel = validate_relpath(item.name)
            validate_relpath(prefix + rel)  # the whole key, as the grant will sign it
        except InvalidNameError as err:
            problems.append(str(err))
            continue
        if not rel.lower().endswith(IMAGE_SUFFIXES):
            problems.append(f"{item.name!r} is not an image file name ({', '.join(IMAGE_SUFFIXES)})")
        if item.bytes > max_bytes:
            problems.append(f"{item.name!r} is {item.bytes} bytes; a grant allows at most {max_bytes}")
        if rel in files:
            problems.append(f"{item.name!r} is named twice")
        if item.sha256 is not None:
            try:
                declared[rel] = validate_sha256(item.sha256)
            except InvalidNameError as err:
                problems.append(f"{item.name!r}: {err}")
        files[rel] = item.bytes
    if problems:
        raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "upload_refused", problems)
    view = dataset_view(b.storage, dataset, BUCKET_INPUT)
    stored = {image.path for image in view.images} | {obj.key[len(prefix) :] for obj in view.loose}
    taken = sorted(set(files) & stored)
    if taken:
        raise ApiError(
            status.HTTP_409_CONFLICT,
            "name_taken",
            [f"{name!r} is already stored in dataset {dataset!r}; upload it under a new name" for name in taken],
        )
    ttl = timedelta(seconds=body.expires)
    for name in files:
        telemetry.access("upload", BUCKET_INPUT, prefix + name, actor=_name(user), dataset=dataset)
    sizes = {sha: b.storage.stat(BUCKET_INPUT, blob_key(sha)) for sha in set(declared.values())}
    reused = {name: sha for name, sha in declared.items() if (o := sizes[sha]) is not None and o.size == files[name]}
    return UploadGrant(
        dataset=dataset,
        bucket=BUCKET_INPUT,
        expires_in=body.expires,
        max_bytes=max_bytes,
        stored=[StoredFile(file=name, bytes=files[name], sha256=sha) for name, sha in reused.items()],
        uploads=[
            UploadURL(file=name, key=prefix + name, bytes=size, url=url, headers=headers)
            for name, size in files.items()
            if name not in reused
            for url, headers in [b.storage.create_only_grant(BUCKET_INPUT, prefix + name, size, ttl)]
        ],
    )


@protected.post(
    "/datasets/{dataset}/commit",
    response_model=CommitResult,
    tags=["uploads"],
    operation_id="commitDataset",
    responses=errors(
        e409="another commit of this dataset is running (commit_conflict), or a stored manifest cannot be used "
        "(manifest_invalid)",
        e413="",
        e422="malformed dataset id (invalid_id), reused files (upload_refused), a reused file whose content is not "
        "stored (blob_missing), or body (validation_failed)",
    ),
)
def dataset_commit(dataset: str, body: CommitRequest, b: BackendsDep) -> CommitResult:
    """Make the uploaded files part of the dataset: each is hashed, stored once under its content (an image
    some dataset already holds is not stored twice), named in the dataset's manifest with the grant's
    ``stored`` files, and its upload object removed. Safe to repeat; one commit per dataset at a time."""
    dataset = checked_id(dataset, "dataset")
    problems: list[str] = []
    reuse: list[DatasetImage] = []
    for item in body.reuse:
        try:
            reuse.append(DatasetImage(validate_relpath(item.file), item.bytes, validate_sha256(item.sha256)))
        except InvalidNameError as err:
            problems.append(str(err))
    if problems:
        raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "upload_refused", problems)
    try:
        with b.metadata.advisory_lock(f"dataset {dataset} (its manifest)", wait=30):
            try:
                done = adopt_loose(b.storage, dataset, BUCKET_INPUT, reuse=reuse)
            finally:  # the dataset's and its images' units as they now stand
                b.metadata.record_usage(b.storage.recount_touched())
            manifest = read_dataset(b.storage, dataset, BUCKET_INPUT)
    except ObjectNotFoundError as err:
        raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "blob_missing", [str(err)]) from err
    except RunConflictError as err:
        raise ApiError(status.HTTP_409_CONFLICT, "commit_conflict", [str(err)]) from err
    return CommitResult(
        dataset=dataset,
        images=len(manifest.images) if manifest else 0,
        adopted=done.adopted,
        new_blobs=done.new_blobs,
        deduplicated=done.deduplicated,
        rejected=done.rejected,
    )


@protected.get("/storage/stats", response_model=StorageStats, tags=["storage"], operation_id="getStorageStats")
def storage_stats(b: BackendsDep) -> StorageStats:
    """Space per bucket as kept by every write of the provider (fresh to the second) with the age of the
    last reconciliation against the server, jobs by status, and the last 24 h of transfer throughput and
    errors. Answered from PostgreSQL alone: a request never lists a bucket, however many objects it holds."""
    now = datetime.now(UTC)
    with b.metadata.session():  # three queries, one connection
        kept = b.metadata.bucket_usage()
        jobs = b.metadata.job_counts()
        transfers = b.metadata.transfer_summary(since=now - timedelta(hours=24))
    buckets = [bucket_usage(s, now) for s in kept]
    return StorageStats(
        buckets=buckets,
        snapshot=None
        if buckets
        else "no storage figures yet: the provider has written nothing, and the e2e3d_maintenance DAG's "
        "reconcile_usage task has not counted the buckets",
        jobs=jobs,
        transfers_24h=transfers,
    )


def bucket_usage(kept: dict[str, Any], now: datetime) -> BucketUsage:
    """One bucket's kept figures as the stats route answers them, ages from ``now``."""
    reconciled = kept["reconciled_at"]
    return BucketUsage(
        **{k: kept[k] for k in ("bucket", "objects", "bytes", "versions", "stored_bytes", "delete_markers")},
        noncurrent_bytes=kept["noncurrent_bytes"],
        units=kept["units"],
        taken_at=kept["updated_at"].isoformat(),
        age_seconds=round((now - kept["updated_at"]).total_seconds(), 1),
        reconciled_at=reconciled.isoformat() if reconciled else None,
        reconciled_age_seconds=round((now - reconciled).total_seconds(), 1) if reconciled else None,
        reconciled_by=kept["reconciled_by"],
        drift=kept["drift"],
    )


@public.get(
    "/health",
    response_model=Health,
    tags=["health"],
    operation_id="getHealth",
    responses={
        503: {
            "model": Health,
            "description": "a dependency is down: the body is a Health saying which (a probe reads one shape whatever "
            "the answer), not an ErrorBody",
        }
    },
)
def health(b: BackendsDep) -> Any:
    """Whether object storage and PostgreSQL answer: up or down only, since anyone may ask (no
    endpoints, versions or errors: those are for the authenticated stats and the server log)."""
    storage_ok, metadata_ok = bool(b.storage.health()["ok"]), bool(b.metadata.health()["ok"])
    ok = storage_ok and metadata_ok
    body = Health(status="ok" if ok else "degraded", storage={"ok": storage_ok}, metadata={"ok": metadata_ok})
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@protected.get("/storage/dashboard", tags=["storage"], operation_id="getDashboard")
def dashboard_data(b: BackendsDep, days: Annotated[float, Query(gt=0, le=366)] = 30.0) -> dict[str, Any]:
    """Every figure of the storage dashboard (space and its projection, throughput, cache hit ratio,
    errors, top downloads, requests by hour, jobs), from PostgreSQL."""
    return dashboard_figures(b.metadata, days)


#: the unversioned paths of before v1: each answers 308 to its v1 path (a 308 keeps the method and the body)
legacy = APIRouter(prefix="/api", include_in_schema=False)
#: old path (below /api/) -> its v1 path (below /api/v1/), by pattern; anything else maps to v1/<the same>
LEGACY_PATHS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"job/([^/]+)/(results|scene)"), r"jobs/\1/\2"),
    (re.compile(r"job/([^/]+)/files/(.*)", re.DOTALL), r"jobs/\1/files/\2"),
    (re.compile(r"dashboard"), "storage/dashboard"),
]


@legacy.api_route("/{rest:path}", methods=["GET", "HEAD", "POST"])
def legacy_redirect(rest: str, request: Request) -> RedirectResponse:
    """``308 Permanent Redirect`` from a path of before v1 to its v1 path, query kept (``jobs/by-run`` became
    ``GET /jobs?dag_id=&run_id=&limit=1``, which answers a JobList). Paths below ``v1/`` that no route
    matched answer 404 ``not_found``: they are not old paths."""
    if rest == "v1" or rest.startswith("v1/"):
        raise ApiError(status.HTTP_404_NOT_FOUND, "not_found", f"no route {API_PREFIX}/{rest[3:]}")
    query = str(request.url.query)
    if rest == "jobs/by-run":
        new = "jobs"
        query = "&".join(part for part in (query, "limit=1") if part)
    else:
        new = next((m.expand(to) for p, to in LEGACY_PATHS if (m := p.fullmatch(rest))), rest)
    target = f"{_root(request)}{API_PREFIX}/{quote(new, safe='/')}" + (f"?{query}" if query else "")
    return RedirectResponse(target, status_code=status.HTTP_308_PERMANENT_REDIRECT)


pages = APIRouter(include_in_schema=False)
STATIC = Path(__file__).parent / "static"
#: the static files the pages load, by suffix: the dashboard's own and the vendored Swagger UI, ReDoc,
#: plotly.js and the 3D viewer's libraries with their WebAssembly (static/vendor/, see its README): every page
#: works with no internet
STATIC_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".wasm": "application/wasm",  # the viewer's LAZ decoder: WebAssembly.instantiateStreaming wants this type
}
VENDOR = "static/vendor"
#: the docs pages fetch nothing from another origin, whatever the vendored bundles would (ReDoc's footer
#: loads its logo from cdn.redoc.ly): scripts, styles, fonts, images, workers and requests are same-origin
#: (the pages' inline init script and the bundles' injected styles are inline; ReDoc's search worker is a blob)
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)


def _root(request: Request) -> str:
    """Where the app is mounted (``/e2e3d`` under the api-server's plugin), for same-origin asset URLs."""
    return str(request.scope.get("root_path", "")).rstrip("/")


@pages.get("/dashboard", response_class=HTMLResponse)
def dashboard_page(user: UserDep) -> HTMLResponse:
    """The storage dashboard (the Airflow UI's nav entry opens it; the UI's login cookie authenticates)."""
    return HTMLResponse((STATIC / "dashboard.html").read_text(), headers={"Cache-Control": "no-cache"})


@pages.get("/viewer", response_class=HTMLResponse)
def viewer_page(user: UserDep) -> HTMLResponse:
    """The 3D viewer: a job's mesh tileset and COPC point cloud streamed through the file route into one view
    (``?job=<id>``, or ``?dag_id=&run_id=`` from a DAG run; without either, a list of jobs to pick from)."""
    return HTMLResponse((STATIC / "viewer.html").read_text(), headers={"Cache-Control": "no-cache"})


@pages.get("/static/{name:path}")
def static_file(name: str) -> FileResponse:
    """A file of ``static/`` (the pages' scripts, styles and icons; no data), revalidated by its ETag."""
    base = STATIC.resolve()
    path = (STATIC / name).resolve()
    if path.suffix not in STATIC_TYPES or not path.is_relative_to(base) or not path.is_file():
        raise ApiError(status.HTTP_404_NOT_FOUND, "not_found", "no such static file")
    return FileResponse(path, media_type=STATIC_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})


@pages.get("/docs", response_class=HTMLResponse)
def swagger_page(request: Request) -> HTMLResponse:
    """Swagger UI for the API, from the package's own copy (FastAPI's default loads it from a CDN)."""
    root = _root(request)
    page = get_swagger_ui_html(
        openapi_url=root + str(request.app.openapi_url),
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}/{VENDOR}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/{VENDOR}/swagger-ui.css",
        swagger_favicon_url=f"{root}/{VENDOR}/swagger-ui-favicon-32x32.png",
        # no badge asking swagger.io to validate the schema: nothing leaves the api-server's origin
        swagger_ui_parameters={"validatorUrl": None},
    )
    page.headers["Content-Security-Policy"] = DOCS_POLICY
    return page


@pages.get("/redoc", response_class=HTMLResponse)
def redoc_page(request: Request) -> HTMLResponse:
    """ReDoc for the API, from the package's own copy, with the system fonts (no Google Fonts)."""
    root = _root(request)
    page = get_redoc_html(
        openapi_url=root + str(request.app.openapi_url),
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}/{VENDOR}/redoc.standalone.js",
        redoc_favicon_url=f"{root}/{VENDOR}/swagger-ui-favicon-32x32.png",
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = DOCS_POLICY
    return page


def create_app(minio_conn_id: str | None = None, metadata_conn_id: str | None = None) -> FastAPI:
    """The results API as a FastAPI app (the plugin mounts one under ``/e2e3d``). Without connection ids,
    ``[e2e3d] minio_conn_id`` / ``metadata_conn_id`` from Airflow's configuration are read at first use,
    else the hooks' defaults."""
    app = FastAPI(
        title="E2E3D results API",
        docs_url=None,  # served by `pages` from the package's copies of Swagger UI and ReDoc, not a CDN
        redoc_url=None,
        version=__version__,
        description="Pre-signed URLs for reconstruction results and input uploads, job and dataset listings, "
        "storage statistics and health. Authenticate with an Airflow JWT (POST /auth/token on the api-server). "
        "Paths are versioned (/api/v1); the unversioned paths of before answer 308 to theirs. Every 4xx and 5xx "
        "answers an ErrorBody {status, code, detail}; branch on code. Listings page by next_cursor.",
        generate_unique_id_function=operation_id,
    )
    app.state.backends = Backends(minio_conn_id, metadata_conn_id)
    app.include_router(public)
    app.include_router(protected)
    app.include_router(legacy)  # after v1: its catch-all must not shadow a v1 route
    app.include_router(pages)

    # Error bodies name the connection id and what failed, never hosts or ports; the server log keeps all.
    failures: list[tuple[type[Exception], str, str, int, str]] = [  # most specific first
        (
            StorageUnreachableError,
            "minio_conn_id",
            "object storage is unavailable (connection {conn!r})",
            503,
            "storage_unavailable",
        ),
        (
            MetadataError,
            "metadata_conn_id",
            "the metadata database is unavailable (connection {conn!r})",
            503,
            "metadata_unavailable",
        ),
        (
            StorageError,
            "minio_conn_id",
            "object storage failed the request ({error}, connection {conn!r})",
            502,
            "storage_failed",
        ),
    ]

    async def failed(request: Request, err: Exception) -> JSONResponse:
        log.error("results API: %s", err)
        _, conn_attr, detail, status_code, code = next(f for f in failures if isinstance(err, f[0]))
        conn = getattr(request.app.state.backends, conn_attr)
        return error_response(status_code, code, detail.format(conn=conn, error=type(err).__name__))

    for kind, *_ in failures:
        app.add_exception_handler(kind, failed)

    async def malformed(request: Request, err: Exception) -> JSONResponse:
        """A stored manifest (a job's, a dataset's) that cannot be used: what is stored is wrong, not the
        request nor the server; the body says what (keys and values only, never hosts)."""
        log.error("results API: %s", err)
        return error_response(409, "manifest_invalid", f"a stored manifest cannot be used: {err}")

    async def http_error(request: Request, err: Exception) -> JSONResponse:
        """Any HTTP error (a route's :class:`ApiError`, Starlette's 404/405, the auth dependency's) as an
        ErrorBody with its code."""
        assert isinstance(err, StarletteHTTPException)
        return error_response(err.status_code, code_of(err), err.detail, headers=err.headers)

    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        """The last resort: an ErrorBody that says nothing of the error (the server log has the traceback)."""
        log.exception("results API: unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "unexpected error: the server log has the details")

    app.add_exception_handler(ManifestError, malformed)
    app.add_exception_handler(RequestValidationError, validation_failed)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
    app.add_middleware(BodyLimit)
    return app


def operation_id(route: APIRoute) -> str:
    """A readable operation id for a route that gives none: its function's name in camelCase, with the method
    when it is not GET (the v1 routes name theirs: ``listJobs``, ``getJobFile``/``headJobFile`` ...)."""
    head, *rest = route.name.split("_")
    name = head + "".join(word.title() for word in rest)
    methods = sorted(route.methods or ["GET"])
    return name if methods == ["GET"] else name + methods[0].title()
