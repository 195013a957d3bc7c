"""The E2E3D results API: pre-signed result and upload URLs, storage statistics, health.

Mounted by the Airflow plugin under ``/e2e3d`` (so ``/e2e3d/api/...`` on the api-server). Every
route but ``/api/health`` requires an Airflow JWT with permission on the reconstruction DAG's runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import cached_property, partial
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from airflow.configuration import conf
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse

from e2e3d_provider import __version__
from e2e3d_provider.api.auth import authorized_user
from e2e3d_provider.api.limits import BodyLimit, validation_failed
from e2e3d_provider.api.published_files import PublishedFilesCache
from e2e3d_provider.api.scene import scene_of
from e2e3d_provider.api.schemas import (
    BucketUsage,
    CommitRequest,
    CommitResult,
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
from e2e3d_provider.lifecycle.inputs.datasets import adopt_loose, dataset_view, read_dataset
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
    """Validate an id before anything touches storage: 422 otherwise."""
    try:
        return validate_id(value, kind)
    except InvalidNameError as err:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(err)) from None


protected = APIRouter(prefix="/api", dependencies=[Depends(authorized_user)])
UserDep = Annotated[Any, Depends(authorized_user)]  # the same dependency: FastAPI runs it once a request


def _name(user: Any) -> str | None:
    try:
        return str(user.get_name())
    except Exception:
        return None


public = APIRouter(prefix="/api")


def served_job(b: Backends, job_id: str) -> dict[str, Any]:
    """The job's row if its results may be served: 404 for an unknown job, 409 for a damaged one."""
    job = b.metadata.get_job(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown job {job_id!r}")
    if job["status"] == "damaged":
        raise HTTPException(
            status.HTTP_409_CONFLICT,
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
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"job {job_id!r} is {job['status']}: its results are not complete (no SUCCESS marker)",
        ) from None
    except (ManifestError, ChecksumMismatchError) as err:  # what is stored, not the storage, is wrong
        log.error("results API: %s", err)
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"job {job_id!r}: its stored results are not served: {err}. "
            f"Re-publish the job, or restore it (e2e3d restore --job {job_id}).",
        ) from None


def file_route(request: Request, job_id: str, path: str) -> str:
    """The file route's URL of a published file (:func:`job_file`'s own, path escaped), below the app's mount
    point (``/e2e3d`` under the api-server): relative references inside the file resolve through it too."""
    return _root(request) + str(protected.url_path_for("job_file", job_id=job_id, path=quote(path, safe="/")))


@protected.get(
    "/job/{job_id}/results",
    response_model=JobResults,
    tags=["results"],
    responses={
        404: {"description": "unknown job"},
        409: {
            "description": "job not complete (no SUCCESS), damaged (a scrub could not repair it), or its stored "
            "manifest malformed, another job's, or not the one its SUCCESS names (the body says which)"
        },
        422: {"description": "malformed job id or expiry"},
    },
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
        raise HTTPException(
            status.HTTP_409_CONFLICT,
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
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
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


FILE_ROUTE = "/job/{job_id}/files/{path:path}"
FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    307: {
        "description": "to a fresh pre-signed URL of the file on object storage (for HEAD, one signed for HEAD), "
        "valid `expires` seconds; send the request's Range header again there and object storage answers 206",
        "headers": {"Location": {"description": "the pre-signed URL", "schema": {"type": "string"}}},
    },
    401: {"description": "no token"},
    403: {"description": "a bad token, or no permission to read runs of the reconstruction DAG"},
    404: {"description": "unknown job, or a path the job's published manifest does not name"},
    409: {
        "description": "job damaged, not complete (no SUCCESS), or its stored manifest malformed, another job's, "
        "or not the one its SUCCESS names"
    },
    422: {"description": "malformed job id, path ('..', '.', empty segments, absolute) or expiry"},
}
FILE_ROUTE_DOC: dict[str, Any] = {
    "tags": ["results"],
    "status_code": 307,
    "response_class": RedirectResponse,
    "responses": FILE_RESPONSES,
}


@protected.get(FILE_ROUTE, **FILE_ROUTE_DOC)
@protected.head(FILE_ROUTE, **FILE_ROUTE_DOC)
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
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(err)) from None
    job = served_job(b, job_id)
    with published_or_409(job):
        published = b.published.lookup(b.storage, job)
    entry = published.files.get(path)
    if entry is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id!r} published no file {path!r}")
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
    "/job/{job_id}/scene",
    response_model=Scene,
    tags=["results"],
    responses={
        404: {"description": "unknown job, or one that published no tileset and no COPC point cloud"},
        409: {"description": "job damaged, not complete (no SUCCESS), or its stored manifest not usable"},
        422: {"description": "malformed job id"},
    },
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
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
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


@protected.get("/jobs", response_model=JobList, tags=["results"], responses={422: {"description": "bad filter"}})
def jobs_list(
    b: BackendsDep,
    job_status: Annotated[
        str | None, Query(alias="status", description=f"only jobs whose newest run is: {', '.join(STATUSES)}")
    ] = None,
    dataset: Annotated[str | None, Query(description="only jobs of this dataset")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LISTED_JOBS, description="at most this many jobs")] = 50,
) -> JobList:
    """Jobs, each once as its newest run (the one the results API serves), most recently updated first:
    what the viewer's job list shows. One query on PostgreSQL, bounded by ``limit``."""
    if job_status is not None and job_status not in STATUSES:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"unknown job status {job_status!r}; use one of {', '.join(STATUSES)}",
        )
    if dataset is not None:
        dataset = checked_id(dataset, "dataset")
    jobs = b.metadata.list_jobs(job_status, limit, dataset=dataset, latest=True)
    return JobList(jobs=[job_summary(j) for j in jobs])


@protected.get(
    "/jobs/by-run",
    response_model=JobSummary,
    tags=["results"],
    responses={404: {"description": "no job is recorded for that DAG run"}, 422: {"description": "bad query"}},
)
def job_by_run(
    b: BackendsDep,
    dag_id: Annotated[str, Query(min_length=1, max_length=250, description="the DAG's id")],
    run_id: Annotated[str, Query(min_length=1, max_length=250, description="the DAG run's id")],
) -> JobSummary:
    """The job a DAG run owns (its ``prepare`` task records the run in the job's row), so a link made from a
    task's DAG run (the "View" extra link, the run's "3D view" tab) finds the job before its id is known
    to the page. A run that owns several jobs answers the newest run among them."""
    jobs = b.metadata.dag_run_jobs(dag_id, run_id)
    if not jobs:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"no job is recorded for DAG run {run_id!r} of {dag_id!r}: the run has not reached its prepare "
            "task yet, prepare refused it, or it is not a run of a reconstruction DAG",
        )
    return job_summary(max(jobs, key=lambda j: (j["stamp"], j["updated_at"])))


@protected.post(
    "/datasets/{dataset}/uploads",
    response_model=UploadGrant,
    tags=["uploads"],
    responses={
        409: {"description": "a file of that name is already stored: a grant never replaces one"},
        422: {"description": "malformed dataset id, file names or sizes"},
    },
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
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, problems)
    view = dataset_view(b.storage, dataset, BUCKET_INPUT)
    stored = {image.path for image in view.images} | {obj.key[len(prefix) :] for obj in view.loose}
    taken = sorted(set(files) & stored)
    if taken:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
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
    responses={
        409: {"description": "another commit of this dataset is running"},
        422: {"description": "malformed dataset id, or a reused file whose content is not stored"},
    },
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
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, problems)
    try:
        with b.metadata.advisory_lock(f"dataset {dataset} (its manifest)", wait=30):
            try:
                done = adopt_loose(b.storage, dataset, BUCKET_INPUT, reuse=reuse)
            finally:  # the dataset's and its images' units as they now stand
                b.metadata.record_usage(b.storage.recount_touched())
            manifest = read_dataset(b.storage, dataset, BUCKET_INPUT)
    except ObjectNotFoundError as err:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, [str(err)]) from err
    except RunConflictError as err:
        raise HTTPException(status.HTTP_409_CONFLICT, [str(err)]) from err
    return CommitResult(
        dataset=dataset,
        images=len(manifest.images) if manifest else 0,
        adopted=done.adopted,
        new_blobs=done.new_blobs,
        deduplicated=done.deduplicated,
        rejected=done.rejected,
    )


@protected.get("/storage/stats", response_model=StorageStats, tags=["storage"])
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


@public.get("/health", response_model=Health, tags=["health"], responses={503: {"model": Health}})
def health(b: BackendsDep) -> Any:
    """Whether object storage and PostgreSQL answer: up or down only, since anyone may ask (no
    endpoints, versions or errors: those are for the authenticated stats and the server log)."""
    storage_ok, metadata_ok = bool(b.storage.health()["ok"]), bool(b.metadata.health()["ok"])
    ok = storage_ok and metadata_ok
    body = Health(status="ok" if ok else "degraded", storage={"ok": storage_ok}, metadata={"ok": metadata_ok})
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@protected.get("/dashboard", tags=["storage"])
def dashboard_data(b: BackendsDep, days: Annotated[float, Query(gt=0, le=366)] = 30.0) -> dict[str, Any]:
    """Every figure of the storage dashboard (space and its projection, throughput, cache hit ratio,
    errors, top downloads, requests by hour, jobs), from PostgreSQL."""
    return dashboard_figures(b.metadata, days)


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
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such static file")
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
        description="Pre-signed URLs for reconstruction results and input uploads, storage statistics "
        "and health. Authenticate with an Airflow JWT (POST /auth/token on the api-server).",
    )
    app.state.backends = Backends(minio_conn_id, metadata_conn_id)
    app.include_router(public)
    app.include_router(protected)
    app.include_router(pages)

    # Error bodies name the connection id and what failed, never hosts or ports; the server log keeps all.
    failures: list[tuple[type[Exception], str, str, int]] = [  # most specific first
        (StorageUnreachableError, "minio_conn_id", "object storage is unavailable (connection {conn!r})", 503),
        (MetadataError, "metadata_conn_id", "the metadata database is unavailable (connection {conn!r})", 503),
        (StorageError, "minio_conn_id", "object storage failed the request ({error}, connection {conn!r})", 502),
    ]

    async def failed(request: Request, err: Exception) -> JSONResponse:
        log.error("results API: %s", err)
        _, conn_attr, detail, code = next(f for f in failures if isinstance(err, f[0]))
        conn = getattr(request.app.state.backends, conn_attr)
        return JSONResponse({"detail": detail.format(conn=conn, error=type(err).__name__)}, status_code=code)

    for kind, *_ in failures:
        app.add_exception_handler(kind, failed)

    async def malformed(request: Request, err: Exception) -> JSONResponse:
        """A stored manifest (a job's, a dataset's) that cannot be used: what is stored is wrong, not the
        request nor the server; the body says what (keys and values only, never hosts)."""
        log.error("results API: %s", err)
        return JSONResponse({"detail": f"a stored manifest cannot be used: {err}"}, status_code=409)

    app.add_exception_handler(ManifestError, malformed)
    app.add_exception_handler(RequestValidationError, validation_failed)
    app.add_middleware(BodyLimit)
    return app
