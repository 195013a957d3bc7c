"""E2E3D backup, daily: the metadata schema (``pg_dump``) and the buckets' current objects, incrementally,
to the backup target of the ``e2e3d_backup`` connection (a second S3 endpoint, or a bucket of its own).

Each run sends only what changed since the last complete backup, checks every object against its
manifest's SHA-256, writes the backup's catalog and then its ``COMPLETE`` record, and records the run in
PostgreSQL (``e2e3d.backups``). A failed run marks nothing complete and leaves earlier backups as they
were. ``e2e3d restore`` brings a backup back.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import dag, task

from e2e3d_provider.hooks import DEFAULT_BACKUP_CONN_ID, ROLE_CONN_IDS
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.durability.backup import BackupTarget, run_backup
from e2e3d_provider.operators.run_context import data_root

SOURCE_CONN_ID = ROLE_CONN_IDS["maintenance"]  # reads every bucket, writes none of them
BACKUP_CONN_ID = DEFAULT_BACKUP_CONN_ID


@dag(
    dag_id="e2e3d_backup",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["e2e3d"],
    doc_md=__doc__,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=10)},
)
def e2e3d_backup() -> None:
    @task
    # [START e2e3d_howto_hook_storage_backup]
    def backup() -> dict[str, Any]:
        spool = data_root() / "tmp"
        spool.mkdir(parents=True, exist_ok=True)
        target = BackupTarget.from_hook(StorageHook(BACKUP_CONN_ID))
        return run_backup(StorageHook(SOURCE_CONN_ID), target, MetadataHook(), spool).to_xcom()

    # [END e2e3d_howto_hook_storage_backup]

    backup()


e2e3d_backup()
