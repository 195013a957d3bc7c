"""CleanupOperator: removes a run's scratch space, never anything outside the data root."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context, TriggerRule

from e2e3d_provider.lifecycle.worker.scratch import clean_run
from e2e3d_provider.links import LIFECYCLE_LINKS
from e2e3d_provider.operators.run_context import as_bool, data_root


class CleanupOperator(BaseOperator):
    """Removes a run's temp directory and, with ``remove_run_dir``, its local run directory.

    Paths come either explicitly (``temp_dir``/``run_dir``, templated, e.g. from ``stage_in``) or
    from ``job_id`` + ``stamp`` through the naming contract. Every path must resolve (symlinks
    included) strictly inside the data root, and ``..`` is refused outright. Missing paths are
    fine (idempotent). Runs with ``trigger_rule="all_done"`` by default, so failed runs are cleaned too.

    Returns ``{"removed": [...], "missing": [...]}``.
    """

    template_fields: Sequence[str] = ("temp_dir", "run_dir", "job_id", "stamp", "data_root", "remove_run_dir")
    ui_color = "#e8c5c5"
    #: "View", "Results" and "Dashboard", as on the other lifecycle operators
    operator_extra_links = LIFECYCLE_LINKS

    def __init__(
        self,
        *,
        temp_dir: str | None = None,
        run_dir: str | None = None,
        job_id: str | None = None,
        stamp: str | None = None,
        remove_run_dir: bool | str = False,
        data_root: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(**kwargs)
        self.temp_dir = temp_dir
        self.run_dir = run_dir
        self.job_id = job_id
        self.stamp = stamp
        self.remove_run_dir = remove_run_dir
        self.data_root = data_root

    def execute(self, context: Context) -> dict[str, list[str]]:
        if not (self.temp_dir or self.run_dir or (self.job_id and self.stamp)):
            self.log.info("nothing to clean: no temp_dir/run_dir and no job_id+stamp given (did stage-in run?)")
        result = clean_run(
            data_root(self.data_root),
            temp_dir=self.temp_dir,
            run_dir=self.run_dir,
            job_id=self.job_id,
            stamp=self.stamp,
            remove_run_dir=as_bool(self.remove_run_dir),
        )
        self.log.info("removed %s; already absent %s", result["removed"] or "nothing", result["missing"] or "nothing")
        return result
