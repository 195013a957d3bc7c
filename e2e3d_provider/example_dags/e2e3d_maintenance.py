"""E2E3D maintenance, daily: check health first (it gates every other task), then clean old temp dirs,
reconcile jobs whose DAG run ended from outside (marked failed in the UI or REST), archive completed
jobs, apply output retention, reconcile the kept storage figures with the server (MinIO's usage report,
else a listing within a time budget that the next run resumes), record storage statistics and throughput,
scrub a rolling share of the published results (repairing what it can), and storage hygiene (stale
uploads, stray objects, VACUUM, volume compaction). Every task is idempotent.

Thresholds come from the DAG params when set, else from PostgreSQL's ``e2e3d.config``
(``temp_max_age_hours``, ``output_retention_days``), else 24 h and 30 days.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from typing import Any

from airflow.sdk import dag, task

from e2e3d_provider.hooks import DEFAULT_BACKUP_CONN_ID, ROLE_CONN_IDS
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.durability.backup import BackupTarget
from e2e3d_provider.lifecycle.maintenance import steps as maintenance
from e2e3d_provider.lifecycle.worker.host_sweep import sweep_host
from e2e3d_provider.operators.params import form_param
from e2e3d_provider.operators.run_context import dag_run_state, data_root, scratch_bounds

MAINTENANCE_CONN_ID = ROLE_CONN_IDS["maintenance"]  # archive, retention deletes, statistics: its role only
BACKUP_CONN_ID = DEFAULT_BACKUP_CONN_ID  # the scrub's last place to repair from


@dag(
    dag_id="e2e3d_maintenance",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["e2e3d"],
    doc_md=__doc__,
    render_template_as_native_obj=True,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=5)},
    params={
        "temp_max_age_hours": form_param(
            None,
            title="Temp dir age (hours)",
            description_md=(
                "`clean_temp` removes temp dirs untouched this long. Empty: `temp_max_age_hours` of "
                "`e2e3d.config`, else 24."
            ),
            section="Thresholds",
            type=["null", "number"],
            minimum=0,
        ),
        "output_retention_days": form_param(
            None,
            title="Output retention (days)",
            description_md=(
                "`apply_retention` removes archived jobs older than this from `output` (the archive keeps them). "
                "Empty: `output_retention_days` of `e2e3d.config`, else 30."
            ),
            section="Thresholds",
            type=["null", "number"],
            minimum=0,
        ),
        "usage_reconcile_budget_seconds": form_param(
            None,
            title="Usage reconciliation budget (seconds)",
            description_md=(
                "`reconcile_usage` lists buckets for at most this long; the next run resumes where it stopped. "
                "Empty: `usage_reconcile_budget_seconds` of `e2e3d.config`, else 600; 0: no bound."
            ),
            section="Thresholds",
            type=["null", "number"],
            minimum=0,
        ),
        "remove_strays": form_param(
            False,
            title="Remove stray objects",
            description_md=(
                "`storage_hygiene` deletes the stray objects it finds: objects no manifest names, left by a "
                "transfer that stopped part-way (never anything younger than its age bound). Off: it only reports them."
            ),
            section="Storage hygiene",
            type="boolean",
        ),
    },
)
def e2e3d_maintenance() -> None:
    @task
    # [START e2e3d_howto_hook_storage_health]
    def health() -> dict[str, Any]:
        return maintenance.check_health(StorageHook(MAINTENANCE_CONN_ID), MetadataHook())

    # [END e2e3d_howto_hook_storage_health]

    @task
    def clean_temp(params: dict[str, Any]) -> dict[str, Any]:
        """Sweep the scratch of the worker this lands on (old temp dirs, the input cache to its bounds).
        Every worker also sweeps itself at the end of its lifecycle tasks, so this is not the only sweep."""
        hours = maintenance.setting(
            MetadataHook(), maintenance.CONFIG_TEMP_MAX_AGE_HOURS, params.get("temp_max_age_hours")
        )
        swept = sweep_host(data_root(), scratch_bounds(hours), force=True) or {}
        return {**swept.get("temp", {}), "host": swept.get("host"), "cache": swept.get("cache")}

    @task
    def reconcile_jobs(**context: Any) -> dict[str, Any]:
        ti = context["ti"]
        return maintenance.reconcile_running_jobs(MetadataHook(), partial(dag_run_state, ti))

    @task
    def archive_completed() -> dict[str, Any]:
        return maintenance.archive_completed(StorageHook(MAINTENANCE_CONN_ID), MetadataHook())

    @task
    # [START e2e3d_howto_hook_metadata_setting]
    def apply_retention(params: dict[str, Any]) -> dict[str, Any]:
        metadata = MetadataHook()
        days = maintenance.setting(metadata, maintenance.CONFIG_RETENTION_DAYS, params.get("output_retention_days"))
        return maintenance.apply_retention(StorageHook(MAINTENANCE_CONN_ID), metadata, days)

    # [END e2e3d_howto_hook_metadata_setting]

    @task
    def reconcile_usage(params: dict[str, Any]) -> dict[str, Any]:
        """Compare the kept storage figures with the server (its usage report, else a listing resumed
        across runs) and correct the drift, so the statistics snapshot after it is right."""
        metadata = MetadataHook()
        budget = maintenance.setting(
            metadata, maintenance.CONFIG_RECONCILE_BUDGET_SECONDS, params.get("usage_reconcile_budget_seconds")
        )
        return maintenance.reconcile_usage(StorageHook(MAINTENANCE_CONN_ID), metadata, time_budget=budget or None)

    @task
    def storage_statistics() -> dict[str, Any]:
        return maintenance.record_statistics(StorageHook(MAINTENANCE_CONN_ID), MetadataHook())

    @task
    def scrub_results() -> dict[str, Any]:
        """Re-read a rolling share of the published results (``scrub_max_bytes`` a run) against their
        manifests; repair from earlier versions, the archive or the backup; mark the rest damaged."""
        metadata = MetadataHook()
        storage = StorageHook(MAINTENANCE_CONN_ID)
        target = BackupTarget.optional(BACKUP_CONN_ID)
        spool = data_root() / "tmp"
        spool.mkdir(parents=True, exist_ok=True)
        max_bytes = int(maintenance.setting(metadata, maintenance.CONFIG_SCRUB_MAX_BYTES))
        return maintenance.scrub(storage, metadata, spool, backup=target, max_bytes=max_bytes).to_xcom()

    @task
    def storage_hygiene(params: dict[str, Any]) -> dict[str, Any]:
        """Abort stale multipart uploads, report (or remove) stray objects, VACUUM bloated metadata tables,
        compact the embedded stack's volumes; each part says what it reclaimed."""
        from airflow.sdk.configuration import conf

        from e2e3d_provider.core.settings import default

        storage = StorageHook(MAINTENANCE_CONN_ID)
        # the object store's compaction, named by a setting (the embedded stack sets it for its components)
        setting = conf.get("e2e3d", "volume_vacuum", fallback=default("volume_vacuum"))
        vacuum = maintenance.configured_vacuum(setting, storage.endpoint_url)
        remove = bool(params.get("remove_strays"))
        return maintenance.storage_hygiene(storage, MetadataHook(), remove_strays=remove, vacuum=vacuum)

    @task
    def trim_telemetry() -> dict[str, int]:
        """Access log, storage errors, worker disks, transfers and snapshots older than the retention."""
        metadata = MetadataHook()
        days = maintenance.setting(metadata, maintenance.CONFIG_TELEMETRY_DAYS)
        return maintenance.trim_telemetry(metadata, days)

    # health gates everything: nothing archives, deletes or counts while storage or PostgreSQL is down
    checked = health()
    checked >> clean_temp()
    checked >> reconcile_jobs()
    checked >> trim_telemetry()
    checked >> scrub_results()
    checked >> storage_hygiene()
    checked >> archive_completed() >> apply_retention() >> reconcile_usage() >> storage_statistics()


e2e3d_maintenance()
