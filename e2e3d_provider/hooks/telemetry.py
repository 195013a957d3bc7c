"""What the storage layer tells operators about itself: Airflow metrics (StatsD / OpenTelemetry through
``Stats``) and rows for PostgreSQL's access log and error table, written in batches.

Recording never fails what it describes: a metric or a row that cannot be sent is dropped with a
warning. Rows wait in a bounded in-process buffer and go to PostgreSQL (``[e2e3d] metadata_conn_id``,
default ``e2e3d_metadata``) from a background thread every second, or when :func:`flush` is called.

An Airflow task process ends with ``os._exit`` and clears the atexit handlers it inherited when it was
forked, so neither the thread nor an atexit hook can be trusted with the rows of a task that fails:
:class:`TaskEndListener` (an Airflow listener the provider's plugin registers) flushes them in the task
runner's ``before_stopping``, which runs whatever the task's outcome (success, retry, failure, skip).
A forked child starts with an empty buffer of its own (:func:`_after_fork`): the parent's rows are the
parent's to write, and a lock held by the parent's thread at the fork would never be released.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)

#: metric names (with Airflow's ``[metrics] statsd_prefix`` in front, ``airflow.`` by default)
METRIC_TRANSFER_BYTES = "e2e3d.transfer.bytes"
METRIC_TRANSFER_FILES = "e2e3d.transfer.files"
METRIC_TRANSFER_SKIPPED_BYTES = "e2e3d.transfer.skipped_bytes"
METRIC_TRANSFER_SECONDS = "e2e3d.transfer.seconds"
METRIC_STORAGE_ERRORS = "e2e3d.storage.errors"
METRIC_ACCESS = "e2e3d.api.access"
MAX_PENDING_ROWS = 10_000
FLUSH_SECONDS = 1.0
#: how long the flush at a task's end waits out a PostgreSQL restart before it drops its rows (the other
#: flushes, every second and at exit, try once: PostgreSQL may simply not be there, as for a CLI command)
TASK_END_DEADLINE = 10.0


def _stats() -> Any:
    from airflow.sdk.observability.stats import Stats

    return Stats


def emit(kind: str, name: str, value: float, tags: dict[str, str]) -> None:
    """One metric through Airflow's ``Stats`` (``incr``, ``gauge`` or ``timing``); never raises."""
    try:
        stats = _stats()
        if kind == "incr":
            stats.incr(name, int(value), tags=tags)
        elif kind == "timing":
            stats.timing(name, value * 1000.0, tags=tags)  # milliseconds, as StatsD timers are
        else:
            stats.gauge(name, value, tags=tags)
    except Exception as err:
        log.debug("metric %s not sent: %s", name, err)


def transfer_metrics(direction: str, bucket: str, files: int, nbytes: int, skipped_bytes: int, seconds: float) -> None:
    """A finished transfer as metrics: bytes and files sent, bytes skipped (cache hits), seconds."""
    tags = {"direction": direction, "bucket": bucket}
    emit("incr", METRIC_TRANSFER_BYTES, nbytes, tags)
    emit("incr", METRIC_TRANSFER_FILES, files, tags)
    emit("incr", METRIC_TRANSFER_SKIPPED_BYTES, skipped_bytes, tags)
    emit("timing", METRIC_TRANSFER_SECONDS, seconds, tags)


class RowBuffer:
    """Rows for PostgreSQL's telemetry tables, batched; bounded (the oldest rows give way when full)."""

    def __init__(self, writer: Callable[[dict[str, list[dict[str, Any]]]], None] | None = None) -> None:
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer = writer
        self.dropped = 0

    def reset(self) -> None:
        """Forget the pending rows, the lock and the thread (in a forked child, where they are the parent's)."""
        self._rows = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None

    def add(self, table: str, row: dict[str, Any]) -> None:
        row.setdefault("at", datetime.now(UTC))
        with self._lock:
            rows = self._rows.setdefault(table, [])
            rows.append(row)
            if len(rows) > MAX_PENDING_ROWS:
                del rows[0]
                self.dropped += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="e2e3d-telemetry", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            self.flush()
            with self._lock:
                if not any(self._rows.values()):
                    self._thread = None
                    return

    def flush(self, deadline: float = 0.0) -> int:
        """Write what is pending, waiting out a PostgreSQL restart up to ``deadline`` seconds; returns how
        many rows were written (0 when PostgreSQL is not there)."""
        with self._lock:
            batch, self._rows = self._rows, {}
        if not any(batch.values()):
            return 0
        try:
            if self._writer is not None:
                self._writer(batch)
            else:
                _write_rows(batch, deadline)
        except Exception as err:  # telemetry must never fail what it describes
            count = sum(len(rows) for rows in batch.values())
            self.dropped += count
            log.warning("telemetry: %d rows dropped, PostgreSQL did not take them: %s", count, err)
            return 0
        return sum(len(rows) for rows in batch.values())


def _write_rows(batch: dict[str, list[dict[str, Any]]], deadline: float) -> None:
    from airflow.configuration import conf

    from e2e3d_provider.core.settings import default
    from e2e3d_provider.hooks.metadata import MetadataHook

    conn_id = conf.get("e2e3d", "metadata_conn_id", fallback=default("metadata_conn_id"))
    MetadataHook(conn_id, retry_deadline=deadline).record_telemetry(batch)


BUFFER = RowBuffer()
atexit.register(BUFFER.flush)


def _after_fork() -> None:
    BUFFER.reset()
    atexit.register(BUFFER.flush)  # the fork's own exit (Airflow's task runner clears the inherited ones)


os.register_at_fork(after_in_child=_after_fork)


class TaskEndListener:
    """An Airflow listener: writes the pending telemetry rows before an Airflow component stops, in
    particular before a task process ends, whatever the task's outcome (the task runner calls
    ``before_stopping`` after the task's success, retry, failure or skip callbacks)."""

    @hookimpl
    def before_stopping(self, component: Any) -> None:
        flush(TASK_END_DEADLINE)


#: the instance the plugin registers (``E2E3DPlugin.listeners``)
TASK_END_LISTENER = TaskEndListener()


def flush(deadline: float = 0.0) -> int:
    """Write the pending telemetry rows now (tests, the end of a command or a task), waiting out a
    PostgreSQL restart up to ``deadline`` seconds."""
    return BUFFER.flush(deadline)


def storage_error(operation: str, bucket: str | None, error: BaseException) -> None:
    """A storage operation that failed after its retries: counted by operation, bucket and error class."""
    error_class = type(error).__name__
    emit("incr", METRIC_STORAGE_ERRORS, 1, {"operation": operation, "bucket": bucket or "", "error": error_class})
    BUFFER.add(
        "storage_errors",
        {"operation": operation, "bucket": bucket, "error_class": error_class, "host": socket.gethostname()},
    )


def access(
    action: str,
    bucket: str,
    key: str,
    *,
    actor: str | None,
    job_id: str | None = None,
    dataset: str | None = None,
    variant: str | None = None,
) -> None:
    """A pre-signed URL handed out (``download``) or an upload granted (``upload``) by the API."""
    emit("incr", METRIC_ACCESS, 1, {"action": action, "bucket": bucket})
    BUFFER.add(
        "access_log",
        {
            "actor": actor,
            "action": action,
            "job_id": job_id,
            "dataset": dataset,
            "bucket": bucket,
            "key": key,
            "variant": variant,
        },
    )


def worker_disk(host: str, data_root: str, total: int, used: int, cache_bytes: int) -> None:
    """A worker's data-root disk, as its sweep found it."""
    BUFFER.add(
        "worker_disks",
        {"host": host, "data_root": data_root, "total_bytes": total, "used_bytes": used, "cache_bytes": cache_bytes},
    )
