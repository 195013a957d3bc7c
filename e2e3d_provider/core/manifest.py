"""Checksums and the run manifest (``metadata.json``): build, write, read, verify (DESIGN §4)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from e2e3d_provider.core.layout import (
    MANIFEST_NAME,
    SUCCESS_NAME,
    VARIANTS_NAME,
    result_kind,
    validate_id,
    validate_relpath,
    validate_stamp,
)
from e2e3d_provider.exceptions import ManifestError, UnreadablePathError, UnsafePathError

CHUNK_SIZE = 1024 * 1024
MANIFEST_VERSION = 1
#: Files of a run directory that are never listed in its manifest.
CONTROL_FILES = frozenset({MANIFEST_NAME, SUCCESS_NAME, VARIANTS_NAME})
#: what a file is to its job: a reconstruction result, a variant derived from one, or a kept intermediate;
#: ``stream`` is a file a viewer streams in pieces (a 3D Tiles tileset and its tiles, a COPC point cloud),
#: kept apart from ``lod``/``web`` so level-of-detail picks never hand out a hundred tiles
ROLES = ("original", "lod", "web", "tile", "stream", "intermediate")
#: the roles of files right-sizing derives from an original
VARIANT_ROLES = ("lod", "web", "tile", "stream")
#: the highest level a file may have (level of detail, pyramid level); the results API asks for at most 64
MAX_LEVEL = 64
#: the largest file a manifest may list: S3's largest object (5 TiB)
MAX_FILE_BYTES = 5 * 1024**4
#: how deep figures and statistics may nest (what right-sizing writes is two levels deep)
MAX_DEPTH = 16
#: the figures of a tile that say where it lies and how big it is: whole numbers from 0 (the API serves them)
TILE_FIGURES = ("row", "col", "width", "height")


def sha256_file(path: Path, chunk_size: int = CHUNK_SIZE) -> str:
    """Return the hex SHA-256 of a file, read in fixed-size chunks (memory stays flat)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


class HashingReader:
    """A read-only file wrapper that hashes (SHA-256) every byte as it is read."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self.sha256.update(data)
        self.bytes_read += len(data)
        return data


@dataclass(frozen=True)
class FileEntry:
    """One file of a run: path relative to the run directory, size in bytes, hex SHA-256, and the ETag
    the server computed when the publish stored it (a cheap check, by listing, that the bytes are still
    the published ones; never the object's own ``x-amz-meta-sha256`` label, which any writer can set).

    Right-sized runs also say what each file is: its ``role`` (:data:`ROLES`), for a variant the
    ``source`` original it derives from and its ``level`` (0 = full resolution), and its ``figures``
    (faces, pixels, points, error...)."""

    path: str
    size: int
    sha256: str
    etag: str | None = None
    role: str | None = None
    source: str | None = None
    level: int | None = None
    figures: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        """What the file is (``mesh``, ``texture``, ``pointcloud``, ``log``, or its folder), as the API says."""
        return result_kind(self.path)


@dataclass
class Manifest:
    """What a completed run holds: job id, stamp, every file with size and sha256, statistics."""

    job_id: str
    stamp: str
    files: list[FileEntry]
    statistics: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    version: int = MANIFEST_VERSION
    #: intermediates the preservation policy kept out of the published set: ``{"prefix", "files", "bytes"}``
    dropped: list[dict[str, Any]] = field(default_factory=list)
    #: the preservation policy the run was published under (what is kept, dropped, removed after archive)
    preservation: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "version": self.version,
            "job_id": self.job_id,
            "stamp": self.stamp,
            "created_at": self.created_at,
            "files": [{k: v for k, v in asdict(entry).items() if v is not None} for entry in self.files],
            "statistics": self.statistics,
        }
        if self.dropped:
            data["dropped"] = self.dropped
        if self.preservation:
            data["preservation"] = self.preservation
        return data

    def to_json(self) -> str:
        """The manifest as JSON; a value JSON has no number for (NaN, infinity, in statistics or figures) is
        refused here, at publish, rather than written into a manifest no reader would take."""
        try:
            return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"
        except ValueError as err:
            raise ManifestError(f"manifest of job {self.job_id} run {self.stamp}: {err} (NaN or infinity)") from err

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """The manifest ``data`` describes, every value checked: a manifest is written by whoever holds the
        worker's keys, so each reader (archive, scrub, backup, hygiene, the API) gets either a manifest whose
        values are what a publish writes or a :class:`ManifestError` saying what is wrong."""
        try:
            version = data.get("version", MANIFEST_VERSION)
            if isinstance(version, bool) or version != MANIFEST_VERSION:
                raise ManifestError(f"unsupported manifest version {version!r}")
            if not isinstance(data["files"], list):
                raise ManifestError("manifest files must be a list")
            files = [_file_entry(item) for item in data["files"]]
            seen: set[str] = set()
            for entry in files:
                if entry.path in seen:
                    raise ManifestError(f"manifest lists {entry.path} twice")
                seen.add(entry.path)
            created_at = data.get("created_at", "")
            if not isinstance(created_at, str):
                raise ManifestError(f"created_at must be a string, not {created_at!r}")
            dropped = data.get("dropped") or []
            if not isinstance(dropped, list):
                raise ManifestError("dropped must be a list")
            return cls(
                job_id=validate_id(data["job_id"], "job_id"),
                stamp=validate_stamp(data["stamp"]),
                files=files,
                statistics=check_object(data.get("statistics"), "statistics"),
                created_at=created_at,
                version=version,
                dropped=[_dropped(item) for item in dropped],
                preservation=_preservation(data.get("preservation")),
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as err:
            if isinstance(err, ManifestError):
                raise
            missing = f"no {err}" if isinstance(err, KeyError) else str(err)
            raise ManifestError(f"malformed manifest: {missing}") from err

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        return cls.from_dict(load_json_object(text, "manifest"))


def load_json_object(text: str | bytes, what: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object, refusing what JSON has no number for (``NaN``, ``Infinity``, and
    numbers beyond a float's range such as ``1e400``, which Python would read as infinity): no reader, and
    no JSON answer of the API, can carry those. Anything else that is not a JSON object is a ManifestError."""
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, bad UTF-8, an int of 5000 digits, deep nesting
        if isinstance(err, ManifestError):
            raise ManifestError(f"{what}: {err}") from None
        raise ManifestError(f"{what} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ManifestError(f"{what} must be a JSON object")
    return data


def _no_constant(name: str) -> Any:
    raise ManifestError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ManifestError(f"the number {text} is out of range")
    return value


def check_count(value: object, what: str, maximum: int | None = None) -> int:
    """``value`` if it is a whole number from 0 (to ``maximum``); booleans, fractions and strings are not."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (maximum is not None and value > maximum):
        bound = f" to {maximum}" if maximum is not None else ""
        raise ManifestError(f"{what} must be a whole number from 0{bound}, not {value!r}")
    return value


def check_level(value: object) -> int:
    """A file's level (0 = full resolution), at most :data:`MAX_LEVEL`."""
    return check_count(value, "level", MAX_LEVEL)


def check_json(value: object, what: str, depth: int = 0) -> Any:
    """``value`` if it is plain JSON (objects with string keys, lists, strings, whole numbers, finite
    numbers, booleans, null) nested at most :data:`MAX_DEPTH` deep: what figures and statistics may hold."""
    if depth > MAX_DEPTH:
        raise ManifestError(f"{what} nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ManifestError(f"{what} holds {value}, which is not a JSON number")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ManifestError(f"{what} has a key that is not a string: {key!r}")
            check_json(item, f"{what}.{key}", depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_json(item, what, depth + 1)
    elif value is not None and not isinstance(value, str | int | float):
        raise ManifestError(f"{what} holds {type(value).__name__}, which is not JSON")
    return value


def check_object(value: object, what: str) -> dict[str, Any]:
    """``value`` as a JSON object (``None`` is an empty one); anything else, a list of pairs say, is refused."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ManifestError(f"{what} must be a JSON object, not {type(value).__name__}")
    return dict(check_json(value, what))


def check_figures(value: object, role: str | None) -> dict[str, Any] | None:
    """A file's figures: a JSON object (or ``None``); a tile's place and size, when given, whole numbers."""
    figures = check_object(value, "figures")
    if role == "tile" and any(name in figures for name in TILE_FIGURES):
        for name in TILE_FIGURES:
            check_count(figures.get(name), f"tile {name}")
    return figures or None


def _file_entry(item: object) -> FileEntry:
    if not isinstance(item, dict):
        raise ManifestError(f"a manifest file must be a JSON object, not {item!r}")
    path = validate_relpath(item["path"])
    etag = item.get("etag")
    if etag is not None and not isinstance(etag, str):
        raise ManifestError(f"{path}: etag must be a string, not {etag!r}")
    role = _check_role(item.get("role"))
    level = item.get("level")
    try:
        return FileEntry(
            path,
            check_count(item["size"], "size", MAX_FILE_BYTES),
            _check_sha(item["sha256"]),
            etag or None,
            role,
            validate_relpath(item["source"]) if item.get("source") else None,
            None if level is None else check_level(level),
            check_figures(item.get("figures"), role),
        )
    except ManifestError as err:
        raise ManifestError(f"{path}: {err}") from None


def _dropped(item: object) -> dict[str, Any]:
    """One entry of ``dropped``: a run-relative folder prefix and its files and bytes (after archive: where)."""
    entry = check_object(item, "a dropped entry")
    prefix = entry.get("prefix")
    if not isinstance(prefix, str) or not prefix.endswith("/"):
        raise ManifestError(f"a dropped entry's prefix must be a folder ending in '/', not {prefix!r}")
    validate_relpath(prefix.rstrip("/"))
    check_count(entry.get("files"), "dropped files")
    check_count(entry.get("bytes"), "dropped bytes")
    return entry


def _preservation(value: object) -> dict[str, Any]:
    """The preservation policy a run was published under, checked as right-sizing checks it (the archive
    removes what its ``remove_after_archive`` names from ``output``)."""
    if not value:
        return {}
    from e2e3d_provider.core.variants import preservation_policy  # variants builds on this module

    return dict(preservation_policy(check_object(value, "preservation")))


def _check_sha(value: object) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ManifestError(f"invalid sha256 {value!r}")
    return value


def _check_role(value: object) -> str | None:
    if value is not None and value not in ROLES:
        raise ManifestError(f"unknown file role {value!r} (roles: {', '.join(ROLES)})")
    return value if value is None else str(value)


def raise_unreadable(err: OSError) -> NoReturn:
    """``os.walk``'s ``onerror``: a folder that cannot be read fails the walk, naming it (a walk that
    skipped it would publish, upload or ingest an incomplete set)."""
    raise UnreadablePathError(
        f"cannot read {err.filename}: {err.strerror}; nothing was skipped: fix its permissions and rerun"
    ) from err


def refuse_links(root: Path, path: Path) -> None:
    """Raise :class:`UnsafePathError` if any step from ``root`` (itself trusted) down to ``path`` (included)
    is a symbolic link: a link on the way could lead a write, a read or a removal out of ``root``. Steps that
    do not exist yet are fine (they are made as real folders)."""
    step = root
    for part in path.relative_to(root).parts:
        step = step / part
        if step.is_symlink():
            raise _link_error(root, step)


def _link_error(root: Path, link: Path) -> UnsafePathError:
    return UnsafePathError(
        f"{link} is a symbolic link (to {os.readlink(link)}); nothing is read, written or removed through "
        f"a link below {root}"
    )


def entries_below(root: Path, paths: Iterable[Path]) -> dict[Path, os.DirEntry[str]]:
    """What is at each of ``paths`` (all below ``root``) now: path -> its directory entry, for those that
    exist. Refuses a symbolic link on the way to any of them as :func:`refuse_links` does, but reads each
    folder once (one listing) instead of a few system calls per path: a download of 10,000 small files
    would otherwise spend more on checking its targets than on writing them."""
    by_folder: dict[Path, list[Path]] = {}
    for path in paths:
        by_folder.setdefault(path.parent, []).append(path)
    found: dict[Path, os.DirEntry[str]] = {}
    for folder, members in by_folder.items():
        refuse_links(root, folder)
        try:
            with os.scandir(folder) as listing:
                entries = {entry.name: entry for entry in listing}
        except FileNotFoundError:
            continue  # made later, as a real folder
        for path in members:
            entry = entries.get(path.name)
            if entry is not None:
                if entry.is_symlink():
                    raise _link_error(root, path)
                found[path] = entry
    return found


def iter_run_files(run_dir: Path, *, links: bool = True) -> Iterator[tuple[str, Path]]:
    """Yield ``(relpath, path)`` for every regular file below ``run_dir``, sorted, skipping the
    manifest and SUCCESS marker at its top and refusing symlinks that leave the directory. With
    ``links=False`` every symbolic link below ``run_dir`` (file or folder) is refused (UnsafePathError):
    what a task hands on must be the run directory's own files, and a linked folder is not skipped in silence."""
    root = run_dir.resolve()
    if not root.is_dir():
        return  # nothing there: the caller says what that means
    for dirpath, dirnames, filenames in os.walk(root, onerror=raise_unreadable):
        dirnames.sort()
        if not links:
            for name in (*dirnames, *filenames):
                refuse_links(root, Path(dirpath) / name)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            relpath = path.relative_to(root).as_posix()
            if relpath in CONTROL_FILES:
                continue
            real = path.resolve()
            if not real.is_relative_to(root):
                raise ManifestError(f"{path} is a link to {real}, outside the run directory {root}")
            if real.is_file():
                yield validate_relpath(relpath), path


def build_manifest(run_dir: Path, job_id: str, stamp: str, statistics: dict[str, Any] | None = None) -> Manifest:
    """Hash every file of a run directory into a :class:`Manifest`."""
    entries = [FileEntry(relpath, path.stat().st_size, sha256_file(path)) for relpath, path in iter_run_files(run_dir)]
    return Manifest(
        job_id=validate_id(job_id, "job_id"),
        stamp=validate_stamp(stamp),
        files=entries,
        statistics=dict(statistics or {}),
    )


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(manifest: Manifest, path: Path) -> None:
    """Write a manifest as JSON, atomically."""
    write_atomic(path, manifest.to_json().encode())


def read_manifest(path: Path) -> Manifest:
    """Read and validate a manifest file."""
    try:
        return Manifest.from_json(path.read_bytes())
    except FileNotFoundError as err:
        raise ManifestError(f"manifest {path} does not exist") from err


def verify_files(run_dir: Path, entries: Iterable[FileEntry]) -> list[str]:
    """Return one message per file of ``entries`` that is missing or differs in size or sha256."""
    problems = []
    for entry in entries:
        path = run_dir.joinpath(*entry.path.split("/"))
        if not path.is_file():
            problems.append(f"{entry.path}: missing")
        elif path.stat().st_size != entry.size:
            problems.append(f"{entry.path}: size {path.stat().st_size} != {entry.size}")
        elif sha256_file(path) != entry.sha256:
            problems.append(f"{entry.path}: sha256 differs from the manifest")
    return problems


def verify_manifest(run_dir: Path, manifest: Manifest, *, exact: bool = True) -> None:
    """Raise :class:`ManifestError` unless every manifest file is present with matching bytes
    (and, with ``exact``, the directory holds no file the manifest does not list)."""
    problems = verify_files(run_dir, manifest.files)
    if exact:
        listed = {entry.path for entry in manifest.files}
        problems += [f"{rel}: not in the manifest" for rel, _ in iter_run_files(run_dir) if rel not in listed]
    if problems:
        raise ManifestError(f"run directory {run_dir} does not match its manifest: " + "; ".join(problems))
