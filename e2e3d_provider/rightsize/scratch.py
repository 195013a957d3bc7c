"""A right-sizing worker's private folder, and the removal of those whose process was killed.

:func:`~e2e3d_provider.rightsize.worker.run_bounded` hands its child the input and takes the output through
a folder under ``TMPDIR``, removed when the call returns. A process killed outright (SIGKILL, the kernel's
out-of-memory killer) cannot remove it, and the input of a large mesh is all of its vertex and face arrays:
each such kill would leave that much behind for good. So the process that makes a folder holds a lock on it
(``flock``) for as long as it uses it; the kernel drops the lock with the process however it ends, and every
later call, in any process, first removes this user's folders that nobody holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

#: the name every such folder starts with
PREFIX = "e2e3d-rightsize-"
#: a folder younger than this is never removed: between its making and its lock it is held by nobody
GRACE_SECONDS = 60.0


@contextlib.contextmanager
def work_folder() -> Iterator[Path]:
    """A new private folder (0700) under ``TMPDIR``, locked while in use and removed afterwards; orphans of
    killed processes are removed first (:func:`sweep_orphans`)."""
    sweep_orphans()
    folder = Path(tempfile.mkdtemp(prefix=PREFIX))
    handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the child does not hold it
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(handle)


def sweep_orphans(root: Path | None = None, grace: float = GRACE_SECONDS) -> list[Path]:
    """Remove the folders of :data:`PREFIX` in ``root`` (``TMPDIR``) that belong to this user, are older
    than ``grace`` seconds and that no process holds; return them. Another user's folders, links and folders
    in use are left alone."""
    root = Path(root or tempfile.gettempdir())
    removed: list[Path] = []
    now = time.time()
    with os.scandir(root) as entries:
        candidates = [entry.path for entry in entries if entry.name.startswith(PREFIX)]
    for path in candidates:
        try:
            handle = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # gone meanwhile, a link, or not ours to open
            continue
        try:
            info = os.fstat(handle)
            if info.st_uid != os.getuid() or now - info.st_mtime < grace:
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its process is alive and using it
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(Path(path))
        finally:
            os.close(handle)
    return removed
