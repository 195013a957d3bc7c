"""A storage failure that ends a task's try is in PostgreSQL's ``e2e3d.storage_errors`` by the time the
task's process is gone, whatever the outcome (a retry, a failure): in a real Airflow deployment, where a
task process ends with ``os._exit`` and runs none of the atexit handlers it inherited."""

from __future__ import annotations

import uuid

import pytest

from e2e3d_provider.devstack.stack import free_ports

pytestmark = [pytest.mark.slow, pytest.mark.one_server, pytest.mark.timeout(600)]


def test_a_task_that_fails_at_once_on_unreachable_storage_leaves_a_row_per_try(airflow_deployment, metadata) -> None:
    (port,) = free_ports(1)  # nothing listens there
    bucket = f"t-{uuid.uuid4().hex[:12]}"  # names this test's rows
    dag_id = "e2e3d_test_unreachable"
    airflow_deployment.wait_for_dag(dag_id)
    airflow_deployment.unpause(dag_id)
    run_id = airflow_deployment.trigger(dag_id, {"endpoint_url": f"http://127.0.0.1:{port}", "bucket": bucket})
    state = airflow_deployment.wait_for_run(dag_id, run_id, timeout=240)
    (ti,) = airflow_deployment.task_instances(dag_id, run_id)
    assert (state, ti["state"], ti["try_number"]) == ("failed", "failed", 2), ti
    with metadata.transaction() as cur:  # no waiting: the rows were written before each try's process ended
        cur.execute("SELECT operation, error_class FROM e2e3d.storage_errors WHERE bucket = %s ORDER BY at", (bucket,))
        rows = cur.fetchall()
    assert rows == [("list", "StorageUnreachableError")] * 2, rows  # the try that was retried, the one that failed
