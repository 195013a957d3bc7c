"""Every (from, to) pair of job statuses outside the state machine is refused, and leaves the run as it was;
every pair inside it is taken. The state machine is written out here, from the README and the schema's
own words, so a change to the code's table is a change this test sees:

queued -> running | failed; running -> succeeded | failed; failed -> running (a retry); succeeded ->
archived; a published run (succeeded, archived) may be found damaged, and a damaged one may run again or,
whole again, go back to succeeded or archived; repeating a status is a no-op. A new run starts queued, so
its first status is one queued may move to: never succeeded, archived or damaged.
"""

from __future__ import annotations

import itertools
import uuid

import pytest

from e2e3d_provider.exceptions import InvalidTransitionError
from e2e3d_provider.hooks.metadata import STATUSES, MetadataHook

STAMP = "20260406T000000Z"
ALLOWED = {
    ("queued", "running"),
    ("queued", "failed"),
    ("running", "succeeded"),
    ("running", "failed"),
    ("failed", "running"),
    ("succeeded", "archived"),
    ("succeeded", "damaged"),
    ("archived", "damaged"),
    ("damaged", "running"),
    ("damaged", "succeeded"),
    ("damaged", "archived"),
} | {(status, status) for status in ("queued", "running", "succeeded", "failed", "archived", "damaged")}
#: a way to each status through allowed moves, from a new run
PATH = {
    "queued": ["queued"],
    "running": ["running"],
    "failed": ["running", "failed"],
    "succeeded": ["running", "succeeded"],
    "archived": ["running", "succeeded", "archived"],
    "damaged": ["running", "succeeded", "damaged"],
}


def test_the_statuses_are_the_ones_this_test_knows() -> None:
    assert set(STATUSES) == set(PATH)


def new_run(metadata: MetadataHook, status: str) -> str:
    job_id = f"st-{uuid.uuid4().hex[:12]}"
    for step in PATH[status]:
        metadata.record_job(job_id, STAMP, "ds", step, error="scrub: a file is missing" if step == "damaged" else None)
    assert metadata.get_job(job_id, STAMP)["status"] == status
    return job_id


@pytest.mark.parametrize(("current", "wanted"), list(itertools.product(PATH, PATH)))
def test_a_move_is_taken_exactly_when_the_state_machine_allows_it(
    metadata: MetadataHook, current: str, wanted: str
) -> None:
    job_id = new_run(metadata, current)
    before = metadata.get_job(job_id, STAMP)
    if (current, wanted) in ALLOWED:
        moved = metadata.record_job(job_id, STAMP, "ds", wanted)
        assert moved["status"] == wanted
        if wanted == "running" and current != "running":  # a run that starts again starts clean
            assert moved["error"] is None and moved["finished_at"] is None
    else:
        with pytest.raises(InvalidTransitionError, match=f"is {current}; it cannot become {wanted}"):
            metadata.record_job(job_id, STAMP, "ds", wanted)
        after = metadata.get_job(job_id, STAMP)
        assert (after["status"], after["updated_at"], after["finished_at"]) == (
            before["status"], before["updated_at"], before["finished_at"],
        )  # fmt: skip


@pytest.mark.parametrize("first", list(PATH))
def test_a_new_run_starts_only_as_queued_may_move(metadata: MetadataHook, first: str) -> None:
    job_id = f"st-{uuid.uuid4().hex[:12]}"
    if ("queued", first) in ALLOWED:
        assert metadata.record_job(job_id, STAMP, "ds", first)["status"] == first
    else:
        with pytest.raises(InvalidTransitionError, match=f"cannot become {first}"):
            metadata.record_job(job_id, STAMP, "ds", first)
        assert metadata.get_job(job_id, STAMP) is None  # nothing is left of the refused run
