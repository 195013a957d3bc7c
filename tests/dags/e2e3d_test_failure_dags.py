"""A task that fails at once because object storage is unreachable (tests only): what it records before
its process ends is checked in tests/test_failure_telemetry.py."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Connection, dag, task

from e2e3d_provider.hooks.storage import StorageHook


@dag(
    dag_id="e2e3d_test_unreachable",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"endpoint_url": "http://127.0.0.1:9", "bucket": "input"},
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
)
def unreachable() -> None:
    @task
    def list_inputs(params: dict[str, Any]) -> list[str]:
        """Lists a bucket through an endpoint nothing listens on, with no outage to wait out (deadline 0):
        the first attempt fails the try; the task is retried once, and fails again."""
        extra = {"endpoint_url": params["endpoint_url"], "retry_deadline": 0}
        conn = Connection(
            conn_id="minio_unreachable", conn_type="aws", login="k", password="s", extra=json.dumps(extra)
        )
        return StorageHook("minio_unreachable", connection=conn).list_keys(params["bucket"])

    list_inputs()


unreachable()
