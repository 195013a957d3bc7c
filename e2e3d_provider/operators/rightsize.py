"""RightSizeOperator: level-of-detail, web and tiled variants of a run's results, before they are published."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import Context

from e2e3d_provider.core.xcom import RightSizeXCom
from e2e3d_provider.lifecycle.results.rightsize import RightSizeRecord, right_size_job, summary
from e2e3d_provider.lifecycle.worker.rework import rework_run
from e2e3d_provider.operators.base import E2E3DOperator
from e2e3d_provider.operators.run_context import as_bool, data_root


class RightSizeOperator(E2E3DOperator):
    """Writes, beside a run's results, a level-of-detail chain of each mesh (OBJ sharing the MTL and
    texture, plus a Draco-compressed GLB per level, with faces and geometric error), a losslessly
    optimized PNG, a web variant, mips and tiles of each texture, and a binary PLY and voxel-grid LODs
    of each point cloud, and records them (with the preservation policy) for ``UploadResultsOperator``,
    which publishes originals and variants under one manifest and one SUCCESS. Originals are never
    changed; a result it cannot read, or that passes one of the policy's limits (``max_pixels``,
    ``max_faces``, ``mesh_seconds`` ...), fails the task (no retry) and leaves no variant behind.

    Returns ``{"enabled", "variants", "original_bytes", "variant_bytes", "seconds", "dropped"}`` (and, with
    ``job_id`` and ``stamp``, ``"handoff"``: the bucket, prefix and manifest key the run waits at).

    :param run_dir: local run directory (templated; usually ``stage_in``'s ``output_dir``).
    :param origin_host: host that wrote ``run_dir`` (templated), named when it is not on this host.
    :param job_id: with ``stamp``, the run (templated): then a run directory that is not on this host is
        rebuilt from the run's hand-off in object storage, and the result is handed off again, so the
        next task may run anywhere. Without them, the run directory must be local.
    :param stamp: the run stamp (templated).
    :param enabled: ``False`` writes no variants, only the preservation policy (templated; a DAG param).
    :param settings: any field of ``RightSizePolicy`` (``mesh_lod_ratios``, ``tile_threshold``,
        ``web_format``, ``preservation`` ...), over the defaults and the ``e2e3d.config`` key ``rightsize``
        (templated).
    :param preservation: ``{"keep": [...], "drop": [...], "remove_after_archive": [...]}``: run-dir
        prefixes published, left out of the publish, and removed from ``output`` after archive
        (default: ``logs/`` kept, ``temp/`` dropped).
    :param data_root: local data root (templated; default ``$E2E3D_DATA_ROOT``, Variable ``e2e3d_data_root``,
        ``/app/data``). With ``job_id`` and ``stamp``, ``run_dir`` must be the run's directory below it
        (``<root>/output/<job_id>/<job_id>_<stamp>``, no symbolic link on the way), since it is made equal to
        the hand-off (files it does not name are removed): any other folder is refused before it is touched.
    """

    template_fields: Sequence[str] = (
        "run_dir",
        "origin_host",
        "job_id",
        "stamp",
        "enabled",
        "settings",
        "preservation",
        "data_root",
    )
    template_fields_renderers = {"settings": "json", "preservation": "json"}
    ui_color = "#e8dcc5"
    sweeps_scratch = True

    def __init__(
        self,
        *,
        run_dir: str,
        origin_host: str | None = None,
        job_id: str | None = None,
        stamp: str | None = None,
        enabled: bool | str = True,
        settings: dict[str, Any] | None = None,
        preservation: dict[str, list[str]] | None = None,
        data_root: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.run_dir = run_dir
        self.origin_host = origin_host
        self.job_id = job_id
        self.stamp = stamp
        self.enabled = enabled
        self.settings = settings
        self.preservation = preservation
        self.data_root = data_root

    def execute(self, context: Context) -> RightSizeXCom:
        settings = dict(self.settings or {})
        if self.preservation is not None:
            settings["preservation"] = self.preservation
        handing = bool(self.job_id and self.stamp)

        def right_size(run_dir: Path) -> RightSizeRecord:
            # bad input or settings (RightSizeInputError, ValueError) fail at once: E2E3DOperator's permanent errors
            return right_size_job(run_dir, self.metadata, settings, enabled=as_bool(self.enabled))

        done = rework_run(
            self.storage,
            right_size,
            run_dir=self.run_dir,
            origin_host=self.origin_host,
            job_id=self.job_id,
            stamp=self.stamp,
            data_root=data_root(self.data_root) if handing else None,
        )
        if done.moved is not None:
            self.log.info("%s made equal to its hand-off: %d bytes moved", done.run_dir, done.moved.bytes)
        run_dir, result = done.run_dir, summary(done.result)
        if done.handoff is not None and done.sent is not None:
            self.record_transfer(context, done.sent, suffix=":handoff", job_id=self.job_id, stamp=self.stamp)
            result["handoff"] = done.handoff.to_xcom()
            self.report_lineage(
                [(done.handoff.bucket, done.handoff.prefix)], [(done.handoff.bucket, done.handoff.prefix)]
            )
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
