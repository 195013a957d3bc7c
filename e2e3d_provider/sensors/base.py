"""Poke, reschedule and deferrable modes for the storage sensors, written once."""

from __future__ import annotations

from datetime import timedelta
from functools import cached_property
from typing import Any

from airflow.sdk import BaseSensorOperator, Context, PokeReturnValue
from airflow.sdk.configuration import conf
from airflow.sdk.exceptions import AirflowException
from airflow.triggers.base import BaseTrigger

from e2e3d_provider.hooks import ROLE_CONN_IDS
from e2e3d_provider.hooks.storage import StorageHook


class StorageSensor(BaseSensorOperator):
    """Base of the E2E3D storage sensors: ``poke()`` in poke and reschedule modes, a trigger when
    ``deferrable=True`` (default from ``[operators] default_deferrable``).

    :param minio_conn_id: Airflow ``aws`` connection of the object store (default ``minio_worker``, the
        workers' role; ``minio_default`` where that is not defined).
    :param deferrable: wait in the triggerer instead of a worker slot.
    """

    def __init__(
        self,
        *,
        minio_conn_id: str = ROLE_CONN_IDS["worker"],
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.minio_conn_id = minio_conn_id
        self.deferrable = deferrable

    @cached_property
    def hook(self) -> StorageHook:
        return StorageHook(self.minio_conn_id)

    def make_trigger(self) -> BaseTrigger:
        raise NotImplementedError

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        first = self.poke(context)  # often already true: no need to wait in the triggerer at all
        if first:
            return first.xcom_value if isinstance(first, PokeReturnValue) else None
        self.defer(
            trigger=self.make_trigger(), method_name="execute_complete", timeout=timedelta(seconds=float(self.timeout))
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger fired; an error event fails (or, with soft_fail, skips) the task."""
        if not event or event.get("status") != "success":
            message = (event or {}).get("message", "the trigger ended without an event")
            raise AirflowException(f"{self.task_id}: waiting failed: {message}")
        return {k: v for k, v in event.items() if k != "status"}
