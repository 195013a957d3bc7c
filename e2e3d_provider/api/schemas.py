"""Request and response models of the results API (they make its OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from e2e3d_provider.core.presign import MAX_PRESIGN_EXPIRY


class TileURL(BaseModel):
    level: int = Field(description="pyramid level: 0 full resolution, n = 1/2^n")
    row: int
    col: int
    width: int
    height: int
    key: str
    url: str = Field(description="pre-signed GET URL")
    route: str = Field(description="the file route's path for this tile (see ResultFile.route)")


class ResultFile(BaseModel):
    path: str = Field(description="path relative to the run directory")
    key: str = Field(description="object key")
    size: int
    sha256: str
    url: str = Field(description="pre-signed GET URL")
    route: str = Field(
        description="the file route (/e2e3d/api/v1/jobs/{job_id}/files/{path}, on the API's origin, authenticated): "
        "a redirect to a fresh pre-signed URL, through which the file's relative references resolve"
    )
    kind: str | None = Field(None, description="mesh, texture, pointcloud, log ...")
    role: str | None = Field(None, description="original, lod, web, tile or intermediate (right-sized runs)")
    source: str | None = Field(None, description="the original a variant derives from")
    level: int | None = Field(None, description="level of detail: 0 full resolution")
    figures: dict[str, Any] | None = Field(None, description="faces, pixels, points, error... as recorded")
    tiles: list[TileURL] | None = Field(None, description="a tile index's tiles, each with its URL")


class ResultGroup(BaseModel):
    original: ResultFile
    variants: list[ResultFile] = Field(description="files derived from the original, by role and level")


class JobResults(BaseModel):
    job_id: str
    stamp: str
    dataset: str
    status: str
    bucket: str
    prefix: str
    expires_in: int = Field(description="seconds the URLs stay valid")
    mesh: str | None = Field(description="pre-signed URL of mesh/reconstructed_mesh.obj")
    texture: str | None = Field(description="pre-signed URL of textures/texture.png")
    pointcloud: str | None = Field(description="pre-signed URL of pointcloud/pointcloud.ply")
    files: list[ResultFile] = Field(description="every published file, or the ones ?lod / ?variant picked")
    results: list[ResultGroup] = Field(
        default_factory=list, description="each result with its variants (right-sized runs); filtered like files"
    )
    levels: list[int] = Field(default_factory=list, description="levels of detail this job has")
    dropped: list[dict[str, Any]] = Field(default_factory=list, description="intermediates left unpublished")
    statistics: dict[str, Any]


class UploadFile(BaseModel):
    name: str = Field(description="file name (relative path) below the dataset")
    bytes: int = Field(ge=1, description="exact size of the file: the grant signs it and the server refuses any other")
    sha256: str | None = Field(
        None, description="hex sha256 of the file (optional): when that content is stored already, nothing is uploaded"
    )


class UploadRequest(BaseModel):
    files: list[UploadFile | str] = Field(
        min_length=1, max_length=1000, description='files to upload, each {"name": ..., "bytes": ...}'
    )
    expires: int = Field(
        3600, ge=1, le=int(MAX_PRESIGN_EXPIRY.total_seconds()), description="seconds the URLs stay valid"
    )


class UploadURL(BaseModel):
    file: str
    key: str
    bytes: int
    method: str = "PUT"
    url: str = Field(description="pre-signed PUT URL, valid for one upload that creates the object")
    headers: dict[str, str] = Field(description="headers the PUT must carry exactly (they are signed)")


class StoredFile(BaseModel):
    file: str
    bytes: int = Field(ge=1)
    sha256: str


class UploadGrant(BaseModel):
    dataset: str
    bucket: str
    expires_in: int
    max_bytes: int = Field(description="largest file a grant allows")
    uploads: list[UploadURL]
    stored: list[StoredFile] = Field(
        default_factory=list,
        description="files whose content is stored already: not uploaded, named in the commit's 'reuse' instead",
    )


class CommitRequest(BaseModel):
    reuse: list[StoredFile] = Field(
        default_factory=list, max_length=10000, description="the grant's 'stored' files, to name in the dataset"
    )


class CommitResult(BaseModel):
    dataset: str
    images: int = Field(description="images the dataset names now")
    adopted: int = Field(description="uploaded or reused images this commit added")
    new_blobs: int = Field(description="images stored for the first time")
    deduplicated: int = Field(description="uploaded images whose content was stored already")
    rejected: list[str] = Field(
        default_factory=list, description="uploaded files that are not images (whatever their name): not adopted"
    )


class BucketUsage(BaseModel):
    bucket: str
    objects: int = Field(description="current objects")
    bytes: int = Field(description="bytes of the current objects")
    versions: int | None = Field(None, description="every stored version, noncurrent ones included")
    stored_bytes: int | None = Field(None, description="bytes the server stores for this bucket, all versions")
    noncurrent_bytes: int | None = Field(None, description="stored_bytes held by noncurrent versions")
    delete_markers: int | None = None
    units: int | None = Field(None, description="the sets counted (jobs, datasets, archived jobs, hand-offs, shards)")
    taken_at: str = Field(description="when these figures last changed (every write by the provider changes them)")
    age_seconds: float = Field(description="seconds since they last changed")
    reconciled_at: str | None = Field(
        None, description="when a reconciliation last compared them with the server (none yet: null)"
    )
    reconciled_age_seconds: float | None = Field(None, description="how old that reconciliation is")
    reconciled_by: str | None = Field(None, description="how it compared: usage-api or listing")
    drift: dict[str, int] | None = Field(
        None, description="what that reconciliation found and corrected: units, objects, bytes"
    )


class StorageStats(BaseModel):
    buckets: list[BucketUsage] = Field(
        description="per bucket, the figures kept as the provider writes (never measured per request)"
    )
    snapshot: str | None = Field(None, description="why no bucket figures are given, when none are recorded yet")
    jobs: dict[str, int] = Field(description="runs per status")
    transfers_24h: dict[str, dict[str, Any]] = Field(
        description="per direction: transfers, files, bytes, seconds, mb_per_s, errors"
    )


class Health(BaseModel):
    status: str = Field(description="ok, or degraded when a dependency is unreachable")
    storage: dict[str, Any]
    metadata: dict[str, Any]


class JobSummary(BaseModel):
    job_id: str
    stamp: str = Field(description="the run: its newest, the one the results API serves")
    dataset: str
    status: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    files: int | None = Field(None, description="files published")
    bytes: int | None = Field(None, description="bytes published")
    dag_id: str | None = Field(None, description="the DAG whose run owns the job (when a DAG ran it)")
    dag_run_id: str | None = None


class JobList(BaseModel):
    jobs: list[JobSummary] = Field(description="each job once (its newest run), most recently updated first")
    next_cursor: str | None = Field(
        None, description="pass as ?cursor= for the next page (opaque); null when this page is the last"
    )


class DatasetSummary(BaseModel):
    dataset: str
    objects: int | None = Field(
        None,
        description="objects below the dataset's folder as last counted (its manifest and uploads not yet "
        "committed; its images are stored once each, by content, and counted there); null: not counted yet",
    )
    bytes: int | None = Field(None, description="their bytes, as last counted")
    counted_at: datetime | None = Field(None, description="when they were counted (every write of the provider)")


class DatasetList(BaseModel):
    datasets: list[DatasetSummary] = Field(description="datasets in the order object storage lists them")
    next_cursor: str | None = Field(
        None, description="pass as ?cursor= for the next page (opaque); null when this page is the last"
    )


class SceneTileset(BaseModel):
    path: str = Field(description="path of tileset.json in the run")
    route: str = Field(description="its file route: the tiles' relative URIs resolve through it")
    geometric_error: float = Field(description="the root tile's geometric error (tileset units)")
    box: list[float] = Field(min_length=12, max_length=12, description="the root's boundingVolume.box (z-up)")


class ScenePointcloud(BaseModel):
    path: str = Field(description="path of the COPC file in the run")
    route: str = Field(description="its file route (range requests pass through its redirect)")
    points: int
    cube: list[float] = Field(min_length=4, max_length=4, description="the octree's cube: centre x, y, z, halfsize")


class Scene(BaseModel):
    job_id: str
    stamp: str
    tilesets: list[SceneTileset] = Field(description="3D Tiles 1.1 tilesets of the job's meshes")
    pointclouds: list[ScenePointcloud] = Field(description="COPC point clouds of the job")
    up: str = Field("y", description="up axis of the GLB contents and the point clouds (3D Tiles boxes are z-up)")
