"""Partial files of transfers whose process died: found and removed, never one a live transfer writes.

A download writes to ``.<name>.<pid>.<n>.e2e3d-partial`` beside its target and renames it when verified; it
removes the file itself on any error. Only a process killed outright (SIGKILL, the OOM killer, a power cut)
leaves one behind, and nothing would ever count or remove it: :func:`sweep_partials` does, on each host's
sweep of its data root. A partial is an orphan when it is older than the grace period (its last write) and
the process its name records no longer runs on this host (one whose name records no process goes by age
alone). The data root is this host's own, so a process id in it is one of this host's.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from e2e3d_provider.core.transfer import PARTIAL_SUFFIX

log = logging.getLogger(__name__)

#: ``.<name>.<pid>.<hex>.e2e3d-partial``: the writer's process id is the second-to-last dotted field
_WRITER = re.compile(r"^\..+\.(?P<pid>\d+)\.[0-9a-f]+" + re.escape(PARTIAL_SUFFIX) + "$")
#: seconds after its last write that a partial file whose writer is gone may be removed
DEFAULT_GRACE_SECONDS = 900.0


def writer_pid(path: Path) -> int | None:
    """The process id a partial file's name records, or ``None`` when its name records none."""
    found = _WRITER.match(path.name)
    return int(found.group("pid")) if found else None


def process_alive(pid: int) -> bool:
    """True when a process with this id runs on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True  # no /proc here: os.kill said it exists


def find_partials(root: Path) -> list[tuple[Path, os.stat_result]]:
    """Every partial file below ``root`` (symbolic links are neither followed nor listed)."""
    found = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if not name.endswith(PARTIAL_SUFFIX):
                continue
            path = Path(dirpath) / name
            try:
                st = path.lstat()
            except FileNotFoundError:  # finished (renamed) or removed by its transfer meanwhile
                continue
            if path.is_symlink():
                continue
            found.append((path, st))
    return found


@dataclass
class PartialSweep:
    """What :func:`sweep_partials` removed, and what it left to transfers still running."""

    removed: int = 0
    removed_bytes: int = 0
    live: int = 0
    live_bytes: int = 0
    names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "removed": self.removed,
            "removed_bytes": self.removed_bytes,
            "live": self.live,
            "live_bytes": self.live_bytes,
            "names": self.names[:20],
        }


def sweep_partials(root: Path, grace_seconds: float = DEFAULT_GRACE_SECONDS, now: float | None = None) -> PartialSweep:
    """Remove the partial files below ``root`` left by transfers whose process is gone: untouched for
    ``grace_seconds`` and written by no process running here. Partials of live transfers are counted."""
    now = time.time() if now is None else now
    result = PartialSweep()
    for path, st in find_partials(root):
        pid = writer_pid(path)
        writer_running = pid is not None and pid != 0 and process_alive(pid)
        if writer_running or now - st.st_mtime < grace_seconds:
            result.live += 1
            result.live_bytes += st.st_size
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        result.removed += 1
        result.removed_bytes += st.st_size
        result.names.append(str(path.relative_to(root)))
        log.info("removed %s (%d bytes): a partial download whose process (pid %s) is gone", path, st.st_size, pid)
    return result
