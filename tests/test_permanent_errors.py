"""Permanent errors fail a task at once, whatever its retries; transient ones keep them. One real run of the
lifecycle DAG (dag.test on the session's storage and PostgreSQL) whose models prefix holds nothing, and the
classification every E2E3D operator applies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from e2e3d_provider.devstack.demo import SAMPLE_DIR
from e2e3d_provider.exceptions import (
    BucketNotFoundError,
    ChecksumMismatchError,
    InvalidNameError,
    LocalPathError,
    ManifestError,
    MissingInputError,
    RightSizeInputError,
    RunConflictError,
    RunMismatchError,
    StorageUnreachableError,
    TransferError,
)
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from tests.helpers import load_repo_dag, task_states


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("E2E3D_DATA_ROOT", str(tmp_path / "data"))
    return tmp_path / "data"


def test_stage_in_fails_once_without_retry_when_the_models_prefix_holds_nothing(
    run_dag, storage: StorageHook, metadata: MetadataHook, data_root: Path, unique_id: str
) -> None:
    from e2e3d_provider.lifecycle.inputs.ingest import ingest

    dataset = f"ds-{unique_id}"
    ingest(storage, SAMPLE_DIR, dataset)
    dag = load_repo_dag("e2e3d_reconstruction.py", "e2e3d_reconstruction")
    assert dag.get_task("stage_in").retries >= 1  # retries are configured: only the error's kind stops them
    dr = run_dag(dag, {"dataset": dataset, "job_id": unique_id, "models_prefix": f"none-{unique_id}/"})
    states = task_states(dr)
    assert str(dr.state) == "failed", states
    assert states["stage_in"] == "failed" and states["mark_failed"] == "failed", states
    stage_in = dr.get_task_instance("stage_in")
    assert stage_in.try_number == 1, "a models prefix with no objects was retried"
    job = metadata.get_job(unique_id)
    assert job["status"] == "failed" and "stage_in" in job["error"], job


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (MissingInputError("models prefix 'x/' has no objects"), True),
        (BucketNotFoundError("no bucket models"), True),
        (InvalidNameError("invalid job_id 'bad id!'"), True),
        (ManifestError("metadata.json is not JSON"), True),
        (RunMismatchError("the published set names run B"), True),
        (RightSizeInputError("point 1 has a NaN"), True),
        (ValueError("web_quality must be 1-100, not 101"), True),
        (StorageUnreachableError("no answer from the endpoint"), False),
        (ChecksumMismatchError("bytes differ from the manifest"), False),
        (RunConflictError("another run publishes this job"), False),
        (LocalPathError("run dir is on host b"), False),
        (TransferError("2 files failed", {}), False),
        (OSError("disk full"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_every_operator_fails_a_permanent_error_at_once_and_leaves_the_rest_to_retries(
    error: BaseException, permanent: bool
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from e2e3d_provider.operators.base import E2E3DOperator, is_permanent

    class Failing(E2E3DOperator):
        def execute(self, context: Any) -> None:
            raise error

    assert is_permanent(error) is permanent
    operator = Failing(task_id="failing")
    with pytest.raises(AirflowFailException if permanent else type(error)) as raised:
        operator.execute({})
    if permanent:
        assert raised.value.__cause__ is error and str(error) in str(raised.value)
