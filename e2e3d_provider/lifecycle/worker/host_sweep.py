"""Keep one host's scratch bounded: old run temp dirs, the input cache and the partial files of killed
transfers, swept by the tasks that run there.

Every lifecycle task that touches a worker's disk ends with :func:`sweep_host` on that worker, so the
clean-up reaches each worker's own data root (a scheduled DAG only reaches the worker that picks it up).
A sweep runs at most once per ``every_seconds`` per host (a stamp file in the data root says when the last
ran) and never blocks: when another task of the host is sweeping, this one skips.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from e2e3d_provider.core.settings import default
from e2e3d_provider.hooks import telemetry
from e2e3d_provider.lifecycle.worker.input_cache import trim
from e2e3d_provider.lifecycle.worker.partials import DEFAULT_GRACE_SECONDS, sweep_partials
from e2e3d_provider.lifecycle.worker.scratch import clean_temp

log = logging.getLogger(__name__)

SWEEP_STAMP = ".e2e3d-sweep"


@dataclass(frozen=True)
class ScratchBounds:
    """How much scratch a worker keeps: the input cache's size and age, temp dirs' age, how often to sweep
    (defaults: the declared settings, ``e2e3d_provider.core.settings``), and how long a partial file whose
    process is gone is left (``partial_grace_seconds`` after its last write)."""

    cache_max_bytes: int = default("cache_max_bytes")
    cache_max_age_hours: float = default("cache_max_age_hours")
    temp_max_age_hours: float = default("temp_max_age_hours")
    every_seconds: float = default("sweep_every_seconds")
    partial_grace_seconds: float = DEFAULT_GRACE_SECONDS

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 0:
                raise ValueError(f"scratch bound {name} must not be negative, got {value}")


def sweep_due(root: Path, every_seconds: float, now: float | None = None) -> bool:
    """True when this host's last sweep is older than ``every_seconds`` (or there was none)."""
    now = time.time() if now is None else now
    try:
        return now - (root / SWEEP_STAMP).stat().st_mtime >= every_seconds
    except FileNotFoundError:
        return root.is_dir()


def sweep_host(
    root: Path, bounds: ScratchBounds, *, force: bool = False, now: float | None = None
) -> dict[str, Any] | None:
    """Sweep this host's data root (partial files of transfers killed mid-way, temp dirs past their age, the
    input cache to its bounds) unless one ran less than ``bounds.every_seconds`` ago or runs now; returns
    what it did, or ``None`` when it did not run."""
    now = time.time() if now is None else now
    stamp = root / SWEEP_STAMP
    if not root.is_dir() or not (force or sweep_due(root, bounds.every_seconds, now)):
        return None
    with open(root / f"{SWEEP_STAMP}.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # another task of this host is sweeping
        partials = sweep_partials(root, bounds.partial_grace_seconds, now=now)
        temp = clean_temp(root, bounds.temp_max_age_hours, now=now)
        cache = trim(root, bounds.cache_max_bytes, bounds.cache_max_age_hours, now=now)
        stamp.touch()
        os.utime(stamp, (now, now))
    host = socket.gethostname()
    done = {"host": host, "partials": partials.to_dict(), "temp": temp, "cache": cache.to_dict()}
    disk = shutil.disk_usage(root)  # for the dashboard's projection of when this worker's disk fills
    telemetry.worker_disk(host, str(root), disk.total, disk.used, cache.held_bytes)
    log.info(
        "swept %s on %s: %d partial files of killed transfers removed (%d bytes), %d temp dirs removed, "
        "%d cached datasets and %d cached images removed (%d bytes), cache holds %d bytes",
        root,
        host,
        partials.removed,
        partials.removed_bytes,
        temp["removed"],
        len(cache.removed_datasets),
        cache.removed_blobs,
        cache.freed_bytes,
        cache.held_bytes,
    )
    return done
