"""Local paths handed between tasks: check they exist on this host, and stay inside the data root."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from e2e3d_provider.exceptions import InvalidNameError, LocalPathError

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


def inside_root(path: str | Path, root: Path) -> Path:
    """Resolve ``path`` (symlinks included) and return it if it lies strictly inside ``root``.

    Refuses ``..`` segments outright, and anything that resolves to the root itself or outside it.
    """
    raw = str(path)
    if not raw or raw == ".":
        raise InvalidNameError(f"refusing to clean {raw!r}: not a path")
    if ".." in Path(raw).parts:
        raise InvalidNameError(f"refusing to clean {raw}: '..' segments are not allowed")
    candidate = Path(raw) if Path(raw).is_absolute() else root / raw
    resolved, real_root = candidate.resolve(), root.resolve()
    if resolved == real_root or not resolved.is_relative_to(real_root):
        raise InvalidNameError(f"refusing to clean {raw}: it resolves to {resolved}, outside the data root {real_root}")
    return candidate


def remove_tree(path: Path) -> bool:
    """Remove a directory (or a symlink to one, not its target); False if nothing was there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return True
    if path.is_dir():
        shutil.rmtree(path)
        return True
    return False
