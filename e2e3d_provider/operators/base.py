"""What every E2E3D operator shares: connection ids with defaults, lazily created hooks, and
idempotent transfer records."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator, Context

from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook, TransferResult
from e2e3d_provider.lifecycle.record import record_transfer


class E2E3DOperator(BaseOperator):
    """Base of the E2E3D operators. Hooks are created on first use, never while the DAG is parsed.

    :param minio_conn_id: Airflow ``aws`` connection of the object store (default ``minio_default``).
    :param metadata_conn_id: Airflow ``postgres`` connection of the metadata database; ``None``
        where an operator may run without one.
    """

    def __init__(
        self,
        *,
        minio_conn_id: str = StorageHook.default_conn_name,
        metadata_conn_id: str | None = MetadataHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.minio_conn_id = minio_conn_id
        self.metadata_conn_id = metadata_conn_id

    @cached_property
    def storage(self) -> StorageHook:
        return StorageHook(self.minio_conn_id)

    @cached_property
    def metadata(self) -> MetadataHook | None:
        return MetadataHook(self.metadata_conn_id) if self.metadata_conn_id else None

    def record_transfer(self, context: Context, transfer: TransferResult, *, suffix: str = "", **fields: Any) -> None:
        """Record a transfer in PostgreSQL (when a metadata connection is set), keyed by DAG run, task and
        ``suffix`` so a retry updates its row instead of adding one."""
        if self.metadata is None:
            return
        ti = context.get("ti")
        key = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}{suffix}" if ti else None
        record_transfer(self.metadata, transfer, key, **fields)
