"""RightSizeOperator: level-of-detail, web and tiled variants of a run's results, before they are published."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from e2e3d_provider.exceptions import RightSizeInputError
from e2e3d_provider.lifecycle.local_paths import require_local_dir
from e2e3d_provider.lifecycle.right_size import right_size_job, summary
from e2e3d_provider.operators.base import E2E3DOperator
from e2e3d_provider.operators.run_context import as_bool


class RightSizeOperator(E2E3DOperator):
    """Writes, beside a run's results, a level-of-detail chain of each mesh (OBJ sharing the MTL and
    texture, plus a Draco-compressed GLB per level, with faces and geometric error), a losslessly
    optimized PNG, a web variant, mips and tiles of each texture, and a binary PLY and voxel-grid LODs
    of each point cloud, and records them (with the preservation policy) for ``UploadResultsOperator``,
    which publishes originals and variants under one manifest and one SUCCESS. Originals are never
    changed; a result it cannot read fails the task (no retry) and leaves no variant behind.

    Returns ``{"enabled", "variants", "original_bytes", "variant_bytes", "seconds", "dropped"}``.

    :param run_dir: local run directory (templated; usually ``stage_in``'s ``output_dir``).
    :param origin_host: host that wrote ``run_dir`` (templated), named when it is not on this host.
    :param enabled: ``False`` writes no variants, only the preservation policy (templated; a DAG param).
    :param settings: any field of ``RightSizePolicy`` (``mesh_lod_ratios``, ``tile_threshold``,
        ``web_format``, ``preservation`` ...), over the defaults and the ``e2e3d.config`` key ``rightsize``
        (templated).
    :param preservation: ``{"keep": [...], "drop": [...], "remove_after_archive": [...]}``: run-dir
        prefixes published, left out of the publish, and removed from ``output`` after archive
        (default: ``logs/`` kept, ``temp/`` dropped).
    """

    template_fields: Sequence[str] = ("run_dir", "origin_host", "enabled", "settings", "preservation")
    template_fields_renderers = {"settings": "json", "preservation": "json"}
    ui_color = "#e8dcc5"

    def __init__(
        self,
        *,
        run_dir: str,
        origin_host: str | None = None,
        enabled: bool | str = True,
        settings: dict[str, Any] | None = None,
        preservation: dict[str, list[str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.run_dir = run_dir
        self.origin_host = origin_host
        self.enabled = enabled
        self.settings = settings
        self.preservation = preservation

    def execute(self, context: Context) -> dict[str, Any]:
        run_dir = require_local_dir(self.run_dir, self.origin_host, "run directory")
        settings = dict(self.settings or {})
        if self.preservation is not None:
            settings["preservation"] = self.preservation
        try:
            record = right_size_job(run_dir, self.metadata, settings, enabled=as_bool(self.enabled))
        except (RightSizeInputError, ValueError) as err:  # bad input or settings: a retry cannot help
            raise AirflowFailException(f"right-sizing {run_dir.name}: {err}") from err
        result = summary(record)
        self.log.info(
            "right-sized %s: %d variants, %d bytes beside %d bytes of originals, in %.1f s; not published: %s",
            run_dir.name,
            result["variants"],
            result["variant_bytes"],
            result["original_bytes"],
            result["seconds"],
            ", ".join(result["dropped"]) or "nothing",
        )
        return result
