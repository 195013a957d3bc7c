"""Local paths handed between tasks: check they exist on this host, and stay inside the data root."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from e2e3d_provider.core.layout import RunLayout
from e2e3d_provider.core.manifest import refuse_links
from e2e3d_provider.exceptions import InvalidNameError, LocalPathError, UnsafePathError

REMEDIES = (
    "mount the data root on every worker (NFS, a shared PVC), or run the tasks that share a run "
    "directory on one host (a per-worker queue)"
)


def require_local_dir(path: str | Path, origin_host: str | None = None, what: str = "directory") -> Path:
    """Return ``path`` if it is a directory on this host; otherwise say which host wrote it and how to fix it."""
    local = Path(path)
    if local.is_dir():
        return local
    here = socket.gethostname()
    if origin_host and origin_host != here:
        raise LocalPathError(
            f"{what} {local} was written on host {origin_host!r}, but this task runs on "
            f"{here!r}, where it does not exist. Local paths only mean something on the "
            f"host that wrote them: {REMEDIES}."
        )
    raise LocalPathError(f"{what} {local} does not exist on {here!r}")


def confined_run_dir(path: str | Path, root: Path, job_id: str, stamp: str) -> Path:
    """Return ``path`` if it is the run's own directory under the data root ``root``
    (``<root>/output/<job_id>/<job_id>_<stamp>``, the root spelled as given or resolved) and no step below
    the root is a symbolic link; else UnsafePathError. A run directory from XCom or a template is rebuilt
    from the hand-off (every file it does not name removed) and handed on (every file uploaded): anywhere
    else, that would remove or publish files that are not the run's."""
    given = Path(os.path.abspath(path))
    real_root = root.resolve()
    for base in (Path(os.path.abspath(root)), real_root):
        if given == RunLayout(base, job_id, stamp).run_dir:
            refuse_links(base, given)
            return given
    raise UnsafePathError(
        f"run directory {path} is not run {stamp} of job {job_id} under this host's data root {real_root} "
        f"({RunLayout(real_root, job_id, stamp).run_dir}): refused before anything in it is touched. Pass the "
        "run directory stage_in made (its output_dir), or give the task the data root stage_in used "
        "(E2E3D_DATA_ROOT, the Variable e2e3d_data_root, or the operator's data_root)."
    )


def inside_root(path: str | Path, root: Path, area: str = "", min_depth: int = 1) -> Path:
    """Return ``path`` if removing it can only touch ``<root>/<area>``: it lies at least ``min_depth``
    levels below that folder (so never the folder itself nor a whole top-level folder of the root),
    reached without passing through a symbolic link, and resolving (symlinks included) inside it.

    Refuses ``..`` segments outright. A relative ``path`` is taken relative to ``root``.
    """
    raw = str(path)
    if not raw or raw == ".":
        raise InvalidNameError(f"refusing to clean {raw!r}: not a path")
    if ".." in Path(raw).parts:
        raise InvalidNameError(f"refusing to clean {raw}: '..' segments are not allowed")
    real_root = root.resolve()
    area_dir = (real_root / area) if area else real_root
    candidate = Path(raw) if Path(raw).is_absolute() else real_root / raw
    parent = Path(os.path.normpath(candidate.parent))
    if parent.resolve() != parent:  # a link on the way could lead out and back in: only the last step may be one
        raise InvalidNameError(f"refusing to clean {raw}: the way to it passes through a symbolic link")
    where = f"{area_dir} (data root {real_root})"
    lexical, resolved = parent / candidate.name, candidate.resolve()
    for checked in (lexical, resolved):
        if not checked.is_relative_to(area_dir) or len(checked.relative_to(area_dir).parts) < min_depth:
            raise InvalidNameError(
                f"refusing to clean {raw}: it resolves to {resolved}; only what lies inside {where} may be removed"
            )
    return lexical


def remove_tree(path: Path) -> bool:
    """Remove a directory (or a symlink to one, not its target); False if nothing was there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return True
    if path.is_dir():
        shutil.rmtree(path)
        return True
    return False


def writer_lock_path(local_dir: Path) -> Path:
    """The lock file a task holds while it stages a local mirror (beside the folder, not in it); its mtime
    is the mirror's last use."""
    return local_dir.parent / f".{local_dir.name}.lock"


def reader_lock_path(local_dir: Path) -> Path:
    """The lock file tasks reading a local mirror share, so a cache trim never removes it under them."""
    return local_dir.parent / f".{local_dir.name}.readers"


@contextmanager
def mirror_lock(local_dir: Path) -> Iterator[None]:
    """Hold this host's lock on a local mirror (a staged dataset or models folder) for the block: two
    tasks mirroring one dataset on one worker take turns, so one's removal of files its listing no longer
    has can never take a file the other just fetched. Taking it marks the mirror as used now."""
    path = writer_lock_path(local_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        os.utime(path)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
