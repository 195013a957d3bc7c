"""Local scratch space: a run's own clean-up, and the sweep of temp dirs nobody touched for a while.

Every path removed resolves (symlinks included) strictly inside the data root; ``..`` is refused.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from e2e3d_provider.core.layout import RunLayout
from e2e3d_provider.core.local_paths import inside_root, remove_tree
from e2e3d_provider.exceptions import InvalidNameError

log = logging.getLogger(__name__)


def clean_run(
    root: Path,
    *,
    temp_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
    job_id: str | None = None,
    stamp: str | None = None,
    remove_run_dir: bool = False,
) -> dict[str, list[str]]:
    """Remove a run's temp directory and, with ``remove_run_dir``, its run directory.

    Paths come explicitly (``temp_dir``/``run_dir``) or from ``job_id`` + ``stamp`` through the naming
    contract. Every target is checked before any is removed; missing ones are fine (idempotent).
    Returns ``{"removed": [...], "missing": [...]}``.
    """
    layout = RunLayout(root, job_id, stamp) if job_id and stamp else None
    targets: list[Path] = []
    temp = temp_dir or (layout.temp_dir if layout else None)
    if temp:
        targets.append(inside_root(temp, root, "temp"))  # a run's temp dir: below <root>/temp only
    if remove_run_dir:
        run = run_dir or (layout.run_dir if layout else None)
        if run:  # a run dir is <root>/output/<job_id>/<run>: never a whole job, never output/ itself
            targets.append(inside_root(run, root, "output", min_depth=2))
    removed: list[str] = []  # every target was accepted (or the call refused) before any is removed
    missing: list[str] = []
    for path in targets:
        (removed if remove_tree(path) else missing).append(str(path))
    return {"removed": removed, "missing": missing}


def clean_temp(root: Path, max_age_hours: float, now: float | None = None) -> dict[str, Any]:
    """Remove run temp dirs under ``<root>/temp`` not modified for ``max_age_hours``. An entry that may
    not be removed (a symbolic link leading out of the temp folder) is skipped and reported, never fatal:
    one stray entry must not stop the clean-up of all the others."""
    now = time.time() if now is None else now
    temp = root / "temp"
    removed, kept, skipped = [], 0, []
    for entry in sorted(temp.iterdir()) if temp.is_dir() else []:
        try:
            target = inside_root(entry, root, "temp")
        except InvalidNameError as err:
            skipped.append(entry.name)
            log.warning("clean_temp: skipped %s: %s", entry, err)
            continue
        newest = max([entry.lstat().st_mtime] + [p.lstat().st_mtime for p in entry.rglob("*")])
        if now - newest >= max_age_hours * 3600:
            remove_tree(target)
            removed.append(entry.name)
        else:
            kept += 1
    return {"removed": len(removed), "kept": kept, "names": removed[:20], "skipped": skipped[:20]}
