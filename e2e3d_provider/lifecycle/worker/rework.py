"""Rework a run on this host: get its directory here, change it, hand it on.

A task that changes a run's files (right-sizing) may run on any host. With the run's ``job_id`` and
``stamp``, its directory is made equal to the run's hand-off here first (only what differs moves), the
work runs on it, and the result is handed off again, so the next task may run anywhere too; a copy made
here only for this task is removed once handed on. Without them, the directory must already be here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from e2e3d_provider.core.layout import validate_id, validate_stamp
from e2e3d_provider.core.local_paths import remove_tree, require_local_dir
from e2e3d_provider.core.transfer import TransferResult
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.results.handoff import HandOff, hand_off
from e2e3d_provider.lifecycle.worker.rebuild import local_run_dir

T = TypeVar("T")


@dataclass(frozen=True)
class Reworked(Generic[T]):
    """What reworking a run did: the work's own result, the directory it ran on, what rebuilding it here
    moved (``None``: nothing was rebuilt), and the new hand-off with what it sent (``None`` without a run)."""

    result: T
    run_dir: Path
    moved: TransferResult | None = None
    handoff: HandOff | None = None
    sent: TransferResult | None = None


def rework_run(
    storage: StorageHook,
    work: Callable[[Path], T],
    *,
    run_dir: str | Path,
    origin_host: str | None = None,
    job_id: str | None = None,
    stamp: str | None = None,
    data_root: Path | None = None,
) -> Reworked[T]:
    """Run ``work`` on the run directory and, for a run (``job_id`` and ``stamp``, with ``data_root``), hand
    the result on; see the module. ``run_dir`` is then the run's directory below ``data_root`` (anything
    else is refused before it is touched: it is made equal to the hand-off). A failing ``work`` hands
    nothing on."""
    if not (job_id and stamp):
        local = require_local_dir(run_dir, origin_host, "run directory")
        return Reworked(work(local), local)
    if data_root is None:
        raise ValueError("reworking a handed-off run needs the data root its directory lives below")
    job_id, stamp = validate_id(job_id, "job_id"), validate_stamp(stamp)
    here = local_run_dir(storage, job_id, stamp, data_root, run_dir, origin_host)
    result = work(here.run_dir)
    handed, sent = hand_off(storage, here.run_dir, job_id, stamp)
    if here.rebuilt:  # a copy made on this host only for this task: scratch, now handed on
        remove_tree(here.run_dir)
    return Reworked(result, here.run_dir, here.moved, handed, sent)
