"""CleanupOperator: removes a run's scratch space, never anything outside the data root."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, TriggerRule

from e2e3d_provider.layout import RunLayout, resolve_data_root
from e2e3d_provider.operators.local_paths import inside_root, remove_tree
from e2e3d_provider.operators.run_context import as_bool


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

    def __init__(self, *, temp_dir: str | None = None, run_dir: str | None = None, job_id: str | None = None,
                 stamp: str | None = None, remove_run_dir: bool | str = False, data_root: str | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(**kwargs)
        self.temp_dir = temp_dir
        self.run_dir = run_dir
        self.job_id = job_id
        self.stamp = stamp
        self.remove_run_dir = remove_run_dir
        self.data_root = data_root

    def _targets(self, root: Any) -> list[str]:
        def given(value: str | None) -> bool:
            return bool(value) and value != "None"

        layout = None
        if given(self.job_id) and given(self.stamp):
            layout = RunLayout(root, str(self.job_id), str(self.stamp))
        temp = self.temp_dir if given(self.temp_dir) else (str(layout.temp_dir) if layout else None)
        targets = [temp] if temp else []
        if as_bool(self.remove_run_dir):
            run = self.run_dir if given(self.run_dir) else (str(layout.run_dir) if layout else None)
            if run:
                targets.append(run)
        return targets

    def execute(self, context: Any) -> dict[str, list[str]]:
        root = resolve_data_root(self.data_root)
        targets = self._targets(root)
        if not targets:
            self.log.info("nothing to clean: no temp_dir/run_dir and no job_id+stamp given (did stage-in run?)")
        checked = [inside_root(target, root) for target in targets]  # refuse all before removing any
        removed, missing = [], []
        for path in checked:
            (removed if remove_tree(path) else missing).append(str(path))
        self.log.info("removed %s; already absent %s", removed or "nothing", missing or "nothing")
        return {"removed": removed, "missing": missing}
