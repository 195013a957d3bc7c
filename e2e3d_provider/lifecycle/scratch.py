"""Local scratch space: a run's own clean-up, and the sweep of temp dirs nobody touched for a while.

Every path removed resolves (symlinks included) strictly inside the data root; ``..`` is refused.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from e2e3d_provider.core.layout import RunLayout
from e2e3d_provider.lifecycle.local_paths import inside_root, remove_tree


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
    targets: list[str | Path] = []
    temp = temp_dir or (layout.temp_dir if layout else None)
    if temp:
        targets.append(temp)
    if remove_run_dir:
        run = run_dir or (layout.run_dir if layout else None)
        if run:
            targets.append(run)
    checked = [inside_root(target, root) for target in targets]  # refuse all before removing any
    removed: list[str] = []
    missing: list[str] = []
    for path in checked:
        (removed if remove_tree(path) else missing).append(str(path))
    return {"removed": removed, "missing": missing}


def clean_temp(root: Path, max_age_hours: float, now: float | None = None) -> dict[str, Any]:
    """Remove run temp dirs under ``<root>/temp`` not modified for ``max_age_hours``."""
    now = time.time() if now is None else now
    temp = root / "temp"
    removed, kept = [], 0
    for entry in sorted(temp.iterdir()) if temp.is_dir() else []:
        newest = max([entry.lstat().st_mtime] + [p.lstat().st_mtime for p in entry.rglob("*")])
        if now - newest >= max_age_hours * 3600:
            remove_tree(inside_root(entry, root))
            removed.append(entry.name)
        else:
            kept += 1
    return {"removed": len(removed), "kept": kept, "names": removed[:20]}
