"""Checksums and the run manifest (``metadata.json``): build, write, read, verify (DESIGN §4)."""

from __future__ import annotations

import hashlib
import json
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
from e2e3d_provider.exceptions import ManifestError, UnreadablePathError

CHUNK_SIZE = 1024 * 1024
MANIFEST_VERSION = 1
#: Files of a run directory that are never listed in its manifest.
CONTROL_FILES = frozenset({MANIFEST_NAME, SUCCESS_NAME, VARIANTS_NAME})
#: what a file is to its job: a reconstruction result, a variant derived from one, or a kept intermediate
ROLES = ("original", "lod", "web", "tile", "intermediate")


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
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        try:
            version = int(data.get("version", MANIFEST_VERSION))
            if version != MANIFEST_VERSION:
                raise ManifestError(f"unsupported manifest version {version}")
            files = [
                FileEntry(
                    validate_relpath(item["path"]),
                    int(item["size"]),
                    _check_sha(item["sha256"]),
                    str(item["etag"]) if item.get("etag") else None,
                    _check_role(item.get("role")),
                    validate_relpath(item["source"]) if item.get("source") else None,
                    int(item["level"]) if item.get("level") is not None else None,
                    dict(item["figures"]) if item.get("figures") else None,
                )
                for item in data["files"]
            ]
            return cls(
                job_id=validate_id(data["job_id"], "job_id"),
                stamp=validate_stamp(data["stamp"]),
                files=files,
                statistics=dict(data.get("statistics") or {}),
                created_at=str(data.get("created_at", "")),
                version=version,
                dropped=[dict(item) for item in data.get("dropped") or []],
                preservation=dict(data.get("preservation") or {}),
            )
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, ManifestError):
                raise
            raise ManifestError(f"malformed manifest: {err}") from err

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ManifestError(f"manifest is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ManifestError("manifest must be a JSON object")
        return cls.from_dict(data)


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


def iter_run_files(run_dir: Path) -> Iterator[tuple[str, Path]]:
    """Yield ``(relpath, path)`` for every regular file below ``run_dir``, sorted, skipping the
    manifest and SUCCESS marker at its top and refusing symlinks that leave the directory."""
    root = run_dir.resolve()
    if not root.is_dir():
        return  # nothing there: the caller says what that means
    for dirpath, dirnames, filenames in os.walk(root, onerror=raise_unreadable):
        dirnames.sort()
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
