"""The naming contract: ids, run stamps, local paths and object keys (DESIGN §3).

This is the only module that knows how paths and keys are spelled. Everything here is
pure: validation happens before any I/O, and nothing touches the disk or the network
except :func:`resolve_data_root`, which only reads the environment. No Airflow imports.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from e2e3d_provider.exceptions import InvalidNameError

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: :data:`ID_PATTERN` and the no-``..`` rule in one regular expression that JSON schema (ECMA-262) and Python's
#: ``re.search`` (what jsonschema runs) read alike (``(?!\n)``: Python's ``$`` also matches before a final newline):
#: a trigger form's ``pattern``, so Airflow refuses a bad id before a run exists
ID_JSON_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,127}(?!\n)$"
#: the id rule in words (error messages and trigger-form descriptions)
ID_RULE = "1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit, and no '..'"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
STAMP_PATTERN = re.compile(r"^\d{8}T\d{6}Z$")

DEFAULT_DATA_ROOT = "/app/data"
DATA_ROOT_ENV = "E2E3D_DATA_ROOT"
DATA_ROOT_VARIABLE = "e2e3d_data_root"

BUCKET_INPUT = "input"
BUCKET_OUTPUT = "output"
BUCKET_MODELS = "models"
BUCKET_ARCHIVE = "archive"
DEFAULT_BUCKETS = (BUCKET_INPUT, BUCKET_OUTPUT, BUCKET_MODELS, BUCKET_ARCHIVE)
VERSIONED_BUCKETS = (BUCKET_OUTPUT, BUCKET_MODELS)
#: days a noncurrent version of an object in a versioned bucket is kept (bootstrap lifecycle rule)
DEFAULT_NONCURRENT_DAYS = 30

SUCCESS_NAME = "SUCCESS"
MANIFEST_NAME = "metadata.json"
RUN_SUBDIRS = ("mesh", "textures", "pointcloud", "logs", "temp")
MESH_RELPATH = "mesh/reconstructed_mesh.obj"
MATERIAL_RELPATH = "mesh/reconstructed_mesh.mtl"
TEXTURE_RELPATH = "textures/texture.png"
POINTCLOUD_RELPATH = "pointcloud/pointcloud.ply"
#: the kind of a result file, by its run-dir folder: the words the results API uses too
RESULT_KINDS = {"mesh": "mesh", "textures": "texture", "pointcloud": "pointcloud", "logs": "log"}
#: the run-dir folders whose top-level files are results that right-sizing derives variants from
RESULT_FOLDERS = ("mesh", "textures", "pointcloud")
#: what right-sizing recorded (variants, dropped intermediates); read by publish, never uploaded itself
VARIANTS_NAME = "rightsize.json"
#: variant folders inside a result folder: ``lod<n>/``, ``web/``, ``tiles/`` (reserved: only right-sizing writes them)
_VARIANT_FOLDER = re.compile(r"^(lod\d+|web|tiles)$")

#: Object-key segments are limited (in UTF-8 bytes, as S3 counts) so a key stays under S3's 1024-byte limit.
MAX_RELPATH_LENGTH = 768
_BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def validate_id(value: object, kind: str = "id") -> str:
    """Return ``value`` if it is a valid dataset or job id, else raise :class:`InvalidNameError`.

    Valid ids match ``^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`` and never contain ``..``; that
    excludes empty strings, path separators, absolute paths, control characters and
    anything longer than 128 characters.
    """
    if not isinstance(value, str):
        raise InvalidNameError(f"{kind} must be a string, got {type(value).__name__}")
    if not ID_PATTERN.fullmatch(value) or ".." in value:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidNameError(f"invalid {kind} {shown!r}: use {ID_RULE}")
    return value


def validate_bucket(value: object) -> str:
    """Return ``value`` if it is a valid S3 bucket name, else raise :class:`InvalidNameError`."""
    if not isinstance(value, str) or not _BUCKET_PATTERN.fullmatch(value) or ".." in value:
        raise InvalidNameError(f"invalid bucket name {value!r}: use 3-63 characters from a-z 0-9 . -")
    return value


def validate_relpath(value: object) -> str:
    """Return a normalised POSIX relative path, rejecting traversal, absolute paths and junk."""
    if not isinstance(value, str) or not value:
        raise InvalidNameError(f"relative path must be a non-empty string, got {value!r}")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_RELPATH_LENGTH:
        raise InvalidNameError(f"relative path is longer than {MAX_RELPATH_LENGTH} bytes (UTF-8)")
    if _CONTROL_CHARACTER.search(value):  # a regex: a check per character in Python cost 5 % of a small download
        raise InvalidNameError(f"relative path {value!r} contains control characters")
    if "\\" in value:
        raise InvalidNameError(f"relative path {value!r} contains a backslash")
    if value.startswith("/"):
        raise InvalidNameError(f"relative path {value!r} is absolute")
    parts = value.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise InvalidNameError(f"relative path {value!r} has empty, '.' or '..' segments")
    return posixpath.normpath(value)


def validate_stamp(value: object) -> str:
    """Return ``value`` if it is a run stamp ``YYYYMMDDTHHMMSSZ`` naming a real instant."""
    if not isinstance(value, str) or not STAMP_PATTERN.fullmatch(value):
        raise InvalidNameError(f"invalid run stamp {value!r}: expected UTC YYYYMMDDTHHMMSSZ")
    try:
        datetime.strptime(value, STAMP_FORMAT)
    except ValueError as err:
        raise InvalidNameError(f"invalid run stamp {value!r}: {err}") from None
    return value


def make_stamp(when: datetime | None = None) -> str:
    """Return the run stamp for ``when`` (default: now), converted to UTC."""
    when = when or datetime.now(UTC)
    if when.tzinfo is None:
        raise InvalidNameError("run stamps are made from timezone-aware datetimes only")
    return when.astimezone(UTC).strftime(STAMP_FORMAT)


def parse_stamp(stamp: str) -> datetime:
    """Return the UTC datetime a run stamp names."""
    return datetime.strptime(validate_stamp(stamp), STAMP_FORMAT).replace(tzinfo=UTC)


def resolve_data_root(explicit: str | os.PathLike[str] | None = None, configured: str | None = None) -> Path:
    """Return the local data root: the argument, ``$E2E3D_DATA_ROOT``, ``configured`` (the Airflow
    Variable ``e2e3d_data_root``, which the Airflow layer looks up: ``operators.run_context.data_root``),
    or ``/app/data``, in that order. The result is absolute."""
    chosen = explicit or os.environ.get(DATA_ROOT_ENV) or configured or DEFAULT_DATA_ROOT
    return Path(chosen).expanduser().resolve()


def job_id_from_run_id(run_id: str) -> str:
    """A valid job id derived from an Airflow run id (``manual__2026-11-24T10:00:00+00:00`` ->
    ``manual__2026-11-24T10-00-00-00-00``): invalid characters become ``-``, ``..`` is collapsed."""
    candidate = re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-._")
    while ".." in candidate:
        candidate = candidate.replace("..", ".")
    return validate_id(("job-" + candidate if not candidate[:1].isalnum() else candidate)[:128] or "job", "job_id")


def derived_job_id(dataset: str, stamp: str, run_id: str) -> str:
    """A readable job id for a run triggered without one: ``<dataset>-<stamp>-<6 hex of the run id>``
    (``terrain-20261125T040919Z-3fa9c1``); the suffix keeps two runs of one second apart."""
    suffix = hashlib.sha256(run_id.encode()).hexdigest()[:6]
    return validate_id(f"{validate_id(dataset, 'dataset')[:100]}-{validate_stamp(stamp)}-{suffix}", "job_id")


def result_kind(relpath: str) -> str:
    """The kind of a run-relative file: ``texture`` for ``textures/...``, ``file`` at the top level."""
    head, sep, _ = relpath.partition("/")
    return RESULT_KINDS.get(head, head) if sep else "file"


def variant_relpath(original: str, folder: str, name: str | None = None) -> str:
    """Where a variant of the result ``original`` lives: ``mesh/reconstructed_mesh.obj`` + ``lod1`` ->
    ``mesh/lod1/reconstructed_mesh.obj`` (``name`` replaces the file name, e.g. to change its suffix)."""
    head, _, tail = validate_relpath(original).rpartition("/")
    if head not in RESULT_FOLDERS or not _VARIANT_FOLDER.fullmatch(folder.split("/")[0]):
        raise InvalidNameError(f"no variant folder {folder!r} for {original!r}")
    return validate_relpath(f"{head}/{folder}/{name or tail}")


def is_variant_path(relpath: str) -> bool:
    """Whether a run-relative path lies in a variant folder of a result folder (written by right-sizing)."""
    parts = relpath.split("/")
    return len(parts) > 2 and parts[0] in RESULT_FOLDERS and bool(_VARIANT_FOLDER.fullmatch(parts[1]))


def is_result_original(relpath: str) -> bool:
    """Whether a run-relative path is a result right-sizing starts from: a file directly in a result folder."""
    parts = relpath.split("/")
    return len(parts) == 2 and parts[0] in RESULT_FOLDERS


def run_name(job_id: str, stamp: str) -> str:
    """Return ``<job_id>_<stamp>``, the name of one run of a job."""
    return f"{validate_id(job_id, 'job_id')}_{validate_stamp(stamp)}"


_RUN_NAME = re.compile(r"^(?P<job>.+)_(?P<stamp>\d{8}T\d{6}Z)$")


def parse_run_name(name: str, job_id: str | None = None) -> tuple[str, str] | None:
    """The ``(job_id, stamp)`` of a run name (:func:`run_name`), or ``None`` when ``name`` is no run's
    name (or, with ``job_id``, names a run of another job)."""
    match = _RUN_NAME.match(name)
    if match is None or (job_id is not None and match["job"] != job_id):
        return None
    try:
        return validate_id(match["job"], "job_id"), validate_stamp(match["stamp"])
    except InvalidNameError:
        return None


# ---------------------------------------------------------------------------------------
# Local paths
# ---------------------------------------------------------------------------------------


def input_dir(root: Path, dataset: str) -> Path:
    """Return ``<root>/input/<dataset>``, the staged copy of a dataset."""
    return root / "input" / validate_id(dataset, "dataset")


#: this host's content-addressed read-through cache of input images: ``<root>/cache/sha256/<2 hex>/<sha256>``
CACHE_DIR = "cache"


def cache_blob_path(root: Path, sha256: str) -> Path:
    """Return where this host's cache keeps the image whose content hashes to ``sha256``."""
    sha256 = validate_sha256(sha256)
    return root / CACHE_DIR / "sha256" / sha256[:2] / sha256


def models_dir(root: Path, prefix: str) -> Path:
    """Return ``<root>/models/<prefix>``, the staged copy of a models prefix."""
    return root / "models" / validate_relpath(prefix.strip("/"))


@dataclass(frozen=True)
class RunLayout:
    """Local paths of one run of a job under a data root (DESIGN §3)."""

    root: Path
    job_id: str
    stamp: str

    def __post_init__(self) -> None:
        validate_id(self.job_id, "job_id")
        validate_stamp(self.stamp)

    @property
    def name(self) -> str:
        return run_name(self.job_id, self.stamp)

    @property
    def run_dir(self) -> Path:
        return self.root / "output" / self.job_id / self.name

    @property
    def temp_dir(self) -> Path:
        return self.root / "temp" / self.name

    @property
    def manifest_path(self) -> Path:
        return self.run_dir / MANIFEST_NAME

    @property
    def success_path(self) -> Path:
        return self.run_dir / SUCCESS_NAME

    def path(self, relpath: str) -> Path:
        """Return the local path of ``relpath`` inside the run directory."""
        return self.run_dir / validate_relpath(relpath)


# ---------------------------------------------------------------------------------------
# Object keys
# ---------------------------------------------------------------------------------------


def input_prefix(dataset: str) -> str:
    """Return the key prefix of a dataset in the ``input`` bucket: ``<dataset>/``."""
    return f"{validate_id(dataset, 'dataset')}/"


#: where the ``input`` bucket keeps each distinct image once, named by its content (a dot: never a dataset id)
BLOB_AREA = ".cas/sha256"
#: a dataset's manifest (every image's path, size and sha256), at the top of its prefix in ``input``
DATASET_MANIFEST_NAME = "dataset.json"
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def validate_sha256(value: object) -> str:
    """Return ``value`` if it is a lower-case hex SHA-256; else :class:`InvalidNameError`."""
    if not isinstance(value, str) or not _SHA256_PATTERN.match(value):
        raise InvalidNameError(f"invalid sha256 {value!r}: expected 64 lower-case hex digits")
    return value


def sharded_sha_path(sha256: str) -> str:
    """Return ``<2 hex>/<sha256>``: where content ``sha256`` sits below a content-addressed area (in a bucket
    or on a disk), spread over 256 folders."""
    sha256 = validate_sha256(sha256)
    return f"{sha256[:2]}/{sha256}"


def sharded_sha_key(area: str, sha256: str) -> str:
    """Return ``<area>/<2 hex>/<sha256>``: a content-addressed key, spread over 256 key prefixes."""
    return f"{area}/{sharded_sha_path(sha256)}"


def blob_key(sha256: str) -> str:
    """Return ``.cas/sha256/<2 hex>/<sha256>``: the one object in ``input`` holding these bytes."""
    return sharded_sha_key(BLOB_AREA, sha256)


def dataset_manifest_key(dataset: str) -> str:
    """Return ``<dataset>/dataset.json``, the key of a dataset's manifest in ``input``."""
    return input_prefix(dataset) + DATASET_MANIFEST_NAME


def output_prefix(job_id: str) -> str:
    """Return the key prefix of a job in the ``output`` bucket: ``<job_id>/``."""
    return f"{validate_id(job_id, 'job_id')}/"


def output_key(job_id: str, relpath: str) -> str:
    """Return ``<job_id>/<relpath>``, the key of a run-relative file in ``output``."""
    return output_prefix(job_id) + validate_relpath(relpath)


def success_key(job_id: str) -> str:
    """Return the key of a job's SUCCESS marker in ``output``."""
    return output_key(job_id, SUCCESS_NAME)


def manifest_key(job_id: str) -> str:
    """Return the key of a job's manifest (``metadata.json``) in ``output``."""
    return output_key(job_id, MANIFEST_NAME)


#: where the storage hook probes what a server does with a conditional write (objects removed at once)
PROBE_AREA = ".e2e3d-probe"


def probe_key(token: str) -> str:
    """``.e2e3d-probe/<token>``: a short-lived object of a server-capability probe."""
    return f"{PROBE_AREA}/{validate_id(token, 'probe token')}"


#: the object-storage area where a task hands a run's files to the next task, whatever host that runs on
WORK_AREA = ".work"
#: the hand-off's own manifest (every handed-off file with size, sha256 and ETag), at the top of its prefix
HANDOFF_NAME = "handoff.json"


def work_prefix(job_id: str, stamp: str) -> str:
    """Return ``.work/<job_id>/<job_id>_<stamp>/``: where one run's files wait in ``output`` between tasks
    (outside ``<job_id>/``, so no reader of results ever lists them; removed once the run is published)."""
    return f"{WORK_AREA}/{validate_id(job_id, 'job_id')}/{run_name(job_id, stamp)}/"


def archive_prefix(job_id: str, stamp: str) -> str:
    """Return ``<job_id>/<job_id>_<stamp>/``, the prefix of one archived run."""
    return f"{validate_id(job_id, 'job_id')}/{run_name(job_id, stamp)}/"


#: the areas each bucket holds besides its top-level ids (datasets, jobs, model folders)
BUCKET_AREAS = {BUCKET_INPUT: (BLOB_AREA.split("/")[0],), BUCKET_OUTPUT: (WORK_AREA,)}


def validate_project_key(bucket: str, key: str) -> str:
    """Return ``key`` if it is a key of the project's layout in one of the project's buckets: a valid
    relative path whose first folder is an id (a dataset, a job, a model folder) or one of the bucket's
    own areas (:data:`BUCKET_AREAS`); else :class:`InvalidNameError`. What a restore may write."""
    if bucket not in DEFAULT_BUCKETS:
        raise InvalidNameError(f"bucket {bucket!r} is not one of the project's ({', '.join(DEFAULT_BUCKETS)})")
    key = validate_relpath(key)
    top = key.split("/", 1)[0]
    if top not in BUCKET_AREAS.get(bucket, ()):
        validate_id(top, f"first folder of {bucket}/{key}")
    return key


def normalize_prefix(prefix: str) -> str:
    """Return a key prefix that is empty or a validated relative path ending in ``/``."""
    prefix = prefix.strip("/")
    return "" if not prefix else validate_relpath(prefix) + "/"


def key_relpath(key: str, prefix: str) -> str:
    """Return the part of ``key`` below ``prefix``, validated as a relative path.

    A key that would escape the local directory it is written to (``..``, absolute,
    empty segments) raises :class:`InvalidNameError`, so a hostile object name can never
    make a download write outside its target directory.
    """
    if not key.startswith(prefix):
        raise InvalidNameError(f"key {key!r} is not below prefix {prefix!r}")
    return validate_relpath(key[len(prefix) :])


def local_path_for(directory: Path, relpath: str) -> Path:
    """Return ``directory/relpath`` after validating ``relpath``; never outside ``directory``."""
    return directory.joinpath(*PurePosixPath(validate_relpath(relpath)).parts)
