"""What every E2E3D operator shares: connection ids with defaults, lazily created hooks, idempotent
transfer records, and permanent errors that fail the task without a retry."""

from __future__ import annotations

import functools
from collections.abc import Callable
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from e2e3d_provider.exceptions import (
    BucketNotFoundError,
    InvalidInputError,
    InvalidTransitionError,
    MissingInputError,
    ReconstructionError,
    RunFinishedError,
)
from e2e3d_provider.hooks import ROLE_CONN_IDS
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook, TransferResult
from e2e3d_provider.lifecycle.results.record import record_transfer
from e2e3d_provider.links import LIFECYCLE_LINKS

#: errors a retry of the task cannot mend: input that is not there (a dataset or models prefix with no
#: objects, a bucket that does not exist) or not usable images, and values that fail validation (``ValueError``:
#: bad ids and paths, manifests that cannot be read or name another run, right-sizing settings and
#: inputs out of bounds), status changes the job lifecycle forbids. Everything else (object-store and
#: PostgreSQL outages, checksum mismatches, another run holding the job's lock, a run dir on another
#: host) keeps the task's retries.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    MissingInputError,
    BucketNotFoundError,
    InvalidInputError,
    ReconstructionError,
    ValueError,
    InvalidTransitionError,
    RunFinishedError,
)


def is_permanent(err: BaseException) -> bool:
    """Whether ``err`` fails a task for good (:data:`PERMANENT_ERRORS`): the one place that decides."""
    return isinstance(err, PERMANENT_ERRORS)


def failing_permanently(execute: Callable[..., Any]) -> Callable[..., Any]:
    """``execute`` with permanent errors raised as :class:`AirflowFailException` (its cause chained), which
    fails the task at once whatever its ``retries``; other errors pass through to the retry policy."""

    @functools.wraps(execute)
    def run(self: BaseOperator, *args: Any, **kwargs: Any) -> Any:
        try:
            return execute(self, *args, **kwargs)
        except Exception as err:
            if not is_permanent(err):
                raise
            raise AirflowFailException(f"{err} ({type(err).__name__}: a retry cannot mend this)") from err

    run.__e2e3d_failing_permanently__ = True  # type: ignore[attr-defined]
    return run


class E2E3DOperator(BaseOperator):
    """Base of the E2E3D operators. Hooks are created on first use, never while the DAG is parsed.

    :param minio_conn_id: Airflow ``aws`` connection of the object store; default the connection of the
        operator's least-privilege role (``minio_worker``; ``minio_maintenance`` for the archive), or
        ``minio_default`` where that is not defined.
    :param metadata_conn_id: Airflow ``postgres`` connection of the metadata database; ``None``
        where an operator may run without one.
    """

    #: operators that use a worker's disk end with a sweep of that worker's scratch (temp dirs, input cache)
    sweeps_scratch: bool = False
    #: the least-privilege storage role whose connection is the default (``core.roles``)
    storage_role: str = "worker"
    #: "View", "Results" and "Dashboard": the viewer and the results API on the job of the task's DAG run, the dashboard
    operator_extra_links = LIFECYCLE_LINKS

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every ``execute`` a subclass defines fails permanently on :data:`PERMANENT_ERRORS`."""
        super().__init_subclass__(**kwargs)
        execute = cls.__dict__.get("execute")
        if callable(execute) and not getattr(execute, "__e2e3d_failing_permanently__", False):
            cls.execute = failing_permanently(execute)  # type: ignore[method-assign]

    def __init__(
        self,
        *,
        minio_conn_id: str | None = None,
        metadata_conn_id: str | None = MetadataHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.minio_conn_id = minio_conn_id or ROLE_CONN_IDS[self.storage_role]
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

    def report_lineage(self, inputs: list[tuple[str, str]], outputs: list[tuple[str, str]]) -> None:
        """What this task read and wrote in object storage (``(bucket, key or prefix)`` pairs), for
        :meth:`get_openlineage_facets_on_complete`."""
        self._lineage = (inputs, outputs)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage input and output datasets, named as the amazon provider names S3 ones: namespace
        ``s3://<bucket>``, name the key or prefix (no trailing slash)."""
        from airflow.providers.openlineage.extractors import OperatorLineage
        from openlineage.client.event_v2 import Dataset

        inputs, outputs = getattr(self, "_lineage", ([], []))

        def datasets(pairs: list[tuple[str, str]]) -> list[Dataset]:
            return [Dataset(namespace=f"s3://{bucket}", name=name.rstrip("/") or "/") for bucket, name in pairs]

        return OperatorLineage(inputs=datasets(inputs), outputs=datasets(outputs))

    def post_execute(self, context: Any, result: Any = None) -> None:
        """Sweep this worker's scratch (at most every ``[e2e3d] sweep_every_seconds``): how temp dirs and
        the input cache stay bounded on every worker, not only the one a maintenance DAG lands on. A sweep
        that fails is logged; it never fails the task whose work is done."""
        from e2e3d_provider.hooks import telemetry

        try:
            self._keep_usage()
            self._sweep_scratch()
        finally:  # a task process may end with os._exit: write its telemetry rows now
            telemetry.flush()

    def _keep_usage(self) -> None:
        """Count afresh the storage units this task wrote that no step recorded with its change (a hand-off,
        a write-back) and store them: the kept figures follow every write. Never fails the task whose work is
        done: a unit not stored here is found by the next reconciliation."""
        storage = self.__dict__.get("storage")  # only a task that used storage wrote anything
        if storage is None or self.metadata is None:
            return
        try:
            counts = storage.recount_touched()
            if counts:
                self.metadata.record_usage(counts)
        except Exception as err:
            self.log.warning("storage usage of this task's writes not recorded (reconciliation will): %s", err)

    def _sweep_scratch(self) -> None:
        if not self.sweeps_scratch:
            return
        from e2e3d_provider.lifecycle.maintenance import steps as maintenance
        from e2e3d_provider.lifecycle.worker.host_sweep import sweep_due, sweep_host
        from e2e3d_provider.operators.run_context import data_root, scratch_bounds

        try:
            root, bounds = data_root(getattr(self, "data_root", None)), scratch_bounds()
            if not sweep_due(root, bounds.every_seconds):
                return
            if self.metadata is not None:  # the platform's temp age, as the maintenance DAG reads it
                hours = maintenance.setting(self.metadata, maintenance.CONFIG_TEMP_MAX_AGE_HOURS)
                bounds = scratch_bounds(hours)
            sweep_host(root, bounds)
        except Exception as err:
            self.log.warning("scratch sweep skipped: %s: %s", type(err).__name__, err)
