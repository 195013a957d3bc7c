"""A real Airflow deployment (api-server, scheduler, dag-processor, triggerer; LocalExecutor) on the
embedded stack, driven only through Airflow's REST API, as an operator of the platform would."""

from __future__ import annotations

import ipaddress
import json
import time
import uuid
from datetime import datetime
from urllib.parse import quote

import pytest

from e2e3d_provider.devstack.airflow_deployment import AirflowDeployment
from e2e3d_provider.devstack.demo import SAMPLE_DIR
from e2e3d_provider.lifecycle.results.record import begin_run
from e2e3d_provider.links import DASHBOARD_PATH, results_url, viewer_url

pytestmark = [pytest.mark.slow, pytest.mark.one_server, pytest.mark.timeout(600)]


def _ingest(storage, dataset: str) -> None:
    from e2e3d_provider.lifecycle.inputs.ingest import ingest

    ingest(storage, SAMPLE_DIR, dataset)


def first_entry(log: str) -> str:
    """The first entry a task logged itself: what the UI shows first, below the folded "Pre Execute" group
    (the runner's own entries before it, and after it its "Post Execute" group)."""
    events = []
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("event"), str):
            events.append(entry["event"])
    pre = events.index("::group::Pre Execute")
    body = events[events.index("::endgroup::", pre) + 1 :]
    return body[0] if body else ""


def xcom_not_found(deployment: AirflowDeployment, run_id: str) -> list[str]:
    """The scheduler log's ``XCom not found`` error lines about ``run_id`` (LocalExecutor: the task
    supervisors run in the scheduler, and log each pull of an XCom that does not exist)."""
    text = deployment.log_path("scheduler").read_text(errors="replace")
    return [line for line in text.splitlines() if "XCom not found" in line and run_id in line]


def test_every_component_listens_on_loopback_only(airflow_deployment: AirflowDeployment) -> None:
    addresses = airflow_deployment.listening_addresses()
    assert ("127.0.0.1", airflow_deployment.port) in addresses
    assert all(ipaddress.ip_address(host).is_loopback for host, _ in addresses), addresses
    health = airflow_deployment.health()
    assert {health[part]["status"] for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")} == {
        "healthy"
    }


def test_each_component_holds_only_the_connections_it_is_given(airflow_deployment: AirflowDeployment) -> None:
    """Every AIRFLOW_CONN_* was copied into every component, so any task could read the admin's and the
    backup target's keys. Each running component was started with its share only (its process's own
    /proc/<pid>/environ cannot show it: Airflow's setproctitle writes the process title over that memory)."""
    from e2e3d_provider.hooks import (
        COMPONENT_CONN_IDS,
        DEFAULT_BACKUP_CONN_ID,
        DEFAULT_MINIO_CONN_ID,
        ROLE_CONN_IDS,
    )

    assert set(airflow_deployment.processes) >= {"api-server", "scheduler", "dag-processor", "triggerer"}
    for component, process in airflow_deployment.processes.items():
        assert process.poll() is None, component  # running, on the environment below
        name = "celery-worker" if component.startswith("worker-") else component
        env = airflow_deployment.component_env(name)
        held = {k.removeprefix("AIRFLOW_CONN_").lower() for k in env if k.startswith("AIRFLOW_CONN_")}
        assert held == set(COMPONENT_CONN_IDS[name]), (component, held)
        assert not held & {DEFAULT_MINIO_CONN_ID, ROLE_CONN_IDS["admin"]}
        if DEFAULT_BACKUP_CONN_ID not in held:  # the embedded stack's backup target still signs with the admin's keys
            assert not any(airflow_deployment.stack_info.secret_key in value for value in env.values()), component


def test_reconstruction_dag_runs_end_to_end_through_the_rest_api(airflow_deployment, storage, metadata) -> None:
    _ingest(storage, "terrain")
    job_id = f"rest-{uuid.uuid4().hex[:10]}"
    airflow_deployment.wait_for_dag("e2e3d_reconstruction")
    airflow_deployment.unpause("e2e3d_reconstruction")
    run_id = airflow_deployment.trigger("e2e3d_reconstruction", {"dataset": "terrain", "job_id": job_id})
    state = airflow_deployment.wait_for_run("e2e3d_reconstruction", run_id, timeout=180)
    states = airflow_deployment.task_states("e2e3d_reconstruction", run_id)
    assert state == "success", states
    assert states["archive"] == "success" and states["mark_failed"] == "skipped", states
    job = metadata.get_job(job_id)
    assert job is not None and job["status"] in ("succeeded", "archived"), job
    assert storage.get_bytes("output", f"{job_id}/SUCCESS") is not None

    # each lifecycle task's "View", "Results" and "Dashboard" links (pushed by the worker as the task ended,
    # served by the api-server) name the run; the results API finds the run's job by it, as the viewer does
    run = f"/api/v2/dags/e2e3d_reconstruction/dagRuns/{quote(run_id, safe='')}/taskInstances"
    for task_id in ("input_present", "stage_in", "reconstruct", "right_size", "cleanup"):
        links = airflow_deployment.get(f"{run}/{task_id}/links")["extra_links"]
        assert links == {
            "View": viewer_url("e2e3d_reconstruction", run_id),
            "Results": results_url("e2e3d_reconstruction", run_id),
            "Dashboard": DASHBOARD_PATH,
        }, (task_id, links)
    assert airflow_deployment.get(f"{run}/prepare/links")["extra_links"] == {}  # a plain @task
    (owner,) = airflow_deployment.get(links["Results"])["jobs"]  # the Results link, as the browser opens it
    assert (owner["job_id"], owner["stamp"], owner["dag_run_id"]) == (job_id, job["stamp"], run_id), owner


def test_deferrable_sensors_resume_in_the_triggerer(airflow_deployment, storage) -> None:
    dataset, job_id = f"ds-{uuid.uuid4().hex[:8]}", f"defer-{uuid.uuid4().hex[:8]}"
    _ingest(storage, dataset)
    dag_id = "e2e3d_test_deferrable"
    airflow_deployment.wait_for_dag(dag_id)
    airflow_deployment.unpause(dag_id)
    run_id = airflow_deployment.trigger(dag_id, {"dataset": dataset, "job_id": job_id})
    seen: dict[str, set[str | None]] = {}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # the marker sensor must be waiting in the triggerer first
        for task_id, state in airflow_deployment.task_states(dag_id, run_id).items():
            seen.setdefault(task_id, set()).add(state)
        if "deferred" in seen.get("results_ready", ()):
            break
        time.sleep(0.5)
    assert "deferred" in seen.get("results_ready", ()), seen
    time.sleep(2)
    storage.put_bytes("output", f"{job_id}/SUCCESS", b"{}")
    state = airflow_deployment.wait_for_run(dag_id, run_id, timeout=90)
    assert state == "success", airflow_deployment.task_states(dag_id, run_id)
    deadline = time.monotonic() + 30  # the triggerer's lines reach the task's log after the run ends
    while True:
        log = airflow_deployment.task_log(dag_id, run_id, "results_ready")
        if ("SuccessMarkerTrigger" in log and "Trigger fired event" in log) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert "Pausing task as DEFERRED" in log  # the worker handed the wait to the triggerer ...
    assert "SuccessMarkerTrigger" in log and "Trigger fired event" in log  # ... which ran the trigger


def test_maintenance_runs_health_first_as_the_rest_api_lists_it(airflow_deployment) -> None:
    airflow_deployment.wait_for_dag("e2e3d_maintenance")
    body = airflow_deployment.get("/api/v2/dags/e2e3d_maintenance/tasks")
    downstream = {task["task_id"]: set(task["downstream_task_ids"]) for task in body["tasks"]}
    reached, frontier = set(), {"health"}
    while frontier:  # everything must be reachable from health: nothing runs before it
        task = frontier.pop()
        reached.add(task)
        frontier |= downstream[task] - reached
    assert reached == set(downstream), downstream
    assert not any("health" in targets for targets in downstream.values())  # and health is first


def test_the_lifecycle_runs_with_the_trigger_forms_defaults(airflow_deployment, storage, metadata) -> None:
    """``conf={}`` as the UI's form sends it with every default (dataset ``terrain``, no job id)."""
    _ingest(storage, "terrain")
    airflow_deployment.wait_for_dag("e2e3d_reconstruction")
    airflow_deployment.unpause("e2e3d_reconstruction")
    run_id = airflow_deployment.trigger("e2e3d_reconstruction", {})
    state = airflow_deployment.wait_for_run("e2e3d_reconstruction", run_id, timeout=180)
    assert state == "success", airflow_deployment.task_states("e2e3d_reconstruction", run_id)


def test_clear_on_a_succeeded_run_is_a_no_op_that_says_why(airflow_deployment, storage, metadata) -> None:
    _ingest(storage, "terrain")
    dag_id, job_id = "e2e3d_reconstruction", f"clear-{uuid.uuid4().hex[:8]}"
    airflow_deployment.wait_for_dag(dag_id)
    airflow_deployment.unpause(dag_id)
    run_id = airflow_deployment.trigger(dag_id, {"dataset": "terrain", "job_id": job_id})
    assert airflow_deployment.wait_for_run(dag_id, run_id, timeout=180) == "success"
    before = metadata.get_job(job_id)
    airflow_deployment.post(  # what the UI's "Clear" on the run does
        f"/api/v2/dags/{dag_id}/clearTaskInstances",
        {"dag_run_id": run_id, "dry_run": False, "only_failed": False, "reset_dag_runs": True},
    )
    deadline = time.monotonic() + 60
    while airflow_deployment.task_states(dag_id, run_id).get("prepare") not in ("skipped", "failed"):
        assert time.monotonic() < deadline, airflow_deployment.task_states(dag_id, run_id)
        time.sleep(1)
    assert airflow_deployment.wait_for_run(dag_id, run_id, timeout=120) == "success"
    states = airflow_deployment.task_states(dag_id, run_id)
    assert states["prepare"] == "skipped" and states["upload_results"] == "skipped", states
    assert states["cleanup"] == "skipped" and states["mark_failed"] == "skipped", states  # nothing to clean
    log = airflow_deployment.task_log(dag_id, run_id, "prepare", try_number=2)
    assert "is not redone" in first_entry(log), log  # the reason, first, not folded into "Post Execute"
    assert xcom_not_found(airflow_deployment, run_id) == [], "the skipped run pulled XComs prepare never pushed"
    after = metadata.get_job(job_id)
    assert (after["stamp"], after["status"]) == (before["stamp"], before["status"])  # untouched


def _wait_for_job(metadata, job_id: str, status: str, timeout: float, what: str) -> dict:
    """The job's row once it has ``status`` (polled: the listener applies a change moments after it)."""
    deadline = time.monotonic() + timeout
    while (job := metadata.get_job(job_id)) is None or job["status"] != status:
        assert time.monotonic() < deadline, f"{what}: job {job_id} is not {status} after {timeout:.0f} s: {job}"
        time.sleep(0.5)
    return job


def test_runs_marked_failed_or_succeeded_through_rest_fail_their_jobs_at_once(
    airflow_deployment, storage, metadata
) -> None:
    """The api-server's listener reconciles a run marked failed or succeeded (the UI's buttons call the same
    endpoint) within moments; what no listener saw (PostgreSQL down at that moment) is the daily
    ``reconcile_jobs``' to catch, asking Airflow for the run's state."""
    dag_id, job_id, marked_ok = "e2e3d_reconstruction", f"ext-{uuid.uuid4().hex[:8]}", f"ok-{uuid.uuid4().hex[:8]}"
    empty = f"empty-{uuid.uuid4().hex[:8]}"  # no images: input_present waits (reschedule) until we intervene
    airflow_deployment.wait_for_dag(dag_id)
    airflow_deployment.unpause(dag_id)
    run_id = airflow_deployment.trigger(dag_id, {"dataset": empty, "job_id": job_id})
    triggered = time.monotonic()
    ok_run = airflow_deployment.trigger(dag_id, {"dataset": empty, "job_id": marked_ok})
    for job in (job_id, marked_ok):
        _wait_for_job(metadata, job, "running", 90, "prepare")
    # a second run of the same job while the first is in progress is refused, touching nothing of it. Its
    # trigger comes a second or more after the first's, so the two runs' stamps (the trigger time, to the
    # second) differ: a second run queued in the same second is refused too, for sharing the run directory
    # (``test_two_dag_runs_never_share_a_run_and_a_finished_run_is_not_redone``), a different reason.
    time.sleep(max(0.0, 1.0 - (time.monotonic() - triggered)))
    second = airflow_deployment.trigger(dag_id, {"dataset": empty, "job_id": job_id})
    assert airflow_deployment.wait_for_run(dag_id, second, timeout=120) == "failed"
    second_states = airflow_deployment.task_states(dag_id, second)
    assert second_states["prepare"] == "failed" and second_states["cleanup"] == "upstream_failed", second_states
    log = airflow_deployment.task_log(dag_id, second, "prepare")
    assert "has a run in progress" in first_entry(log), log  # the reason, first
    assert xcom_not_found(airflow_deployment, second) == [], "the refused run pulled XComs prepare never pushed"
    assert metadata.get_job(job_id)["status"] == "running"  # the refused run's listener call left it alone

    airflow_deployment.patch(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", {"state": "failed"})
    assert airflow_deployment.run_state(dag_id, run_id) == "failed"
    job = _wait_for_job(metadata, job_id, "failed", 120, "marked failed")
    assert f"DAG run {run_id} of {dag_id} ended failed" in job["error"], job
    assert "manually set to `failed`" in job["error"], job  # the api-server's listener, not maintenance

    airflow_deployment.patch(f"/api/v2/dags/{dag_id}/dagRuns/{ok_run}", {"state": "success"})
    job = _wait_for_job(metadata, marked_ok, "failed", 120, "marked success")  # nothing was published
    assert f"DAG run {ok_run} of {dag_id} ended success without finishing the job" in job["error"], job

    # the backstop: jobs left running under a run that ended (the refused one) or that Airflow never had, as
    # a listener that could not reach PostgreSQL would leave them
    missed, gone = f"missed-{uuid.uuid4().hex[:8]}", f"gone-{uuid.uuid4().hex[:8]}"
    begin_run(metadata, missed, "20260101T000000Z", empty, second, dag_id)
    begin_run(metadata, gone, "20260101T000000Z", empty, f"manual__{uuid.uuid4().hex}", dag_id)
    airflow_deployment.wait_for_dag("e2e3d_maintenance")
    airflow_deployment.unpause("e2e3d_maintenance")
    maintenance = airflow_deployment.trigger("e2e3d_maintenance", {})
    state = airflow_deployment.wait_for_run("e2e3d_maintenance", maintenance, timeout=240)
    assert state == "success", airflow_deployment.task_states("e2e3d_maintenance", maintenance)
    job = metadata.get_job(missed)
    assert job["status"] == "failed" and f"DAG run {second} of {dag_id} ended failed" in job["error"], job
    assert "reconciled by maintenance" in job["error"], job
    job = metadata.get_job(gone)
    assert job["status"] == "failed" and "no longer exists" in job["error"], job


def test_a_clear_of_a_failed_task_runs_the_job_again_timed_from_the_restart(
    airflow_deployment, storage, metadata
) -> None:
    """A Clear of the failed task (after fixing its cause) sets the job back to ``running`` while the run
    re-runs, and the job's duration is the re-run's (it was 0.02 s: the clock restarted as it succeeded)."""
    _ingest(storage, "terrain")
    dag_id, job_id, models = "e2e3d_reconstruction", f"clf-{uuid.uuid4().hex[:8]}", f"m-{uuid.uuid4().hex[:8]}"
    airflow_deployment.wait_for_dag(dag_id)
    airflow_deployment.unpause(dag_id)
    run_id = airflow_deployment.trigger(dag_id, {"dataset": "terrain", "job_id": job_id, "models_prefix": models})
    assert airflow_deployment.wait_for_run(dag_id, run_id, timeout=180) == "failed"
    assert airflow_deployment.task_states(dag_id, run_id)["stage_in"] == "failed"  # no models under the prefix
    failed = _wait_for_job(metadata, job_id, "failed", 60, "mark_failed")

    storage.put_bytes("models", f"{models}/weights.bin", b"weights")  # the cause, fixed
    airflow_deployment.post(  # what the UI's "Clear" on the failed task does (downstream included)
        f"/api/v2/dags/{dag_id}/clearTaskInstances",
        {"dag_run_id": run_id, "task_ids": ["stage_in"], "include_downstream": True, "only_failed": False,
         "dry_run": False, "reset_dag_runs": True},
    )  # fmt: skip
    rerun = _wait_for_job(metadata, job_id, "running", 120, "the Clear's restart")
    assert rerun["started_at"] > failed["finished_at"] and rerun["error"] is None, rerun
    assert airflow_deployment.wait_for_run(dag_id, run_id, timeout=180) == "success"

    body = airflow_deployment.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
    restarted, ended = (datetime.fromisoformat(body[k]) for k in ("start_date", "end_date"))
    stage_in = next(t for t in airflow_deployment.task_instances(dag_id, run_id) if t["task_id"] == "stage_in")
    job = metadata.get_job(job_id)
    assert job["status"] in ("succeeded", "archived"), job
    assert job["started_at"] == restarted == rerun["started_at"]  # timed from the restart ...
    assert job["started_at"] <= datetime.fromisoformat(stage_in["start_date"])  # ... before the re-run's first task
    assert restarted < job["finished_at"] <= ended


def test_a_rest_trigger_with_a_bad_job_id_is_refused_with_the_rule_in_words(airflow_deployment) -> None:
    """What the UI's Trigger sends too: the api-server validates the params against the serialized DAG and
    answers 400 with the id rule, not a regular expression; no run is created."""
    from e2e3d_provider.core.layout import ID_RULE
    from e2e3d_provider.devstack.airflow_deployment import ApiError

    dag_id = "e2e3d_reconstruction"
    airflow_deployment.wait_for_dag(dag_id)
    runs_before = airflow_deployment.get(f"/api/v2/dags/{dag_id}/dagRuns?limit=1")["total_entries"]
    with pytest.raises(ApiError) as refused:
        airflow_deployment.trigger(dag_id, {"dataset": "terrain", "job_id": "bad id!"})
    detail = refused.value.detail
    assert refused.value.status == 400, detail
    assert "Invalid input for param job_id" in detail and ID_RULE in detail, detail
    assert "[A-Za-z0-9]" not in detail, detail  # words, not a regular expression
    assert airflow_deployment.get(f"/api/v2/dags/{dag_id}/dagRuns?limit=1")["total_entries"] == runs_before


def test_the_results_api_is_mounted_in_the_real_api_server(airflow_deployment: AirflowDeployment) -> None:
    health = airflow_deployment.get("/e2e3d/api/v1/health")  # the plugin, loaded by the api-server process
    assert health["status"] == "ok" and health["storage"]["ok"] and health["metadata"]["ok"], health


def _login(browser, deployment: AirflowDeployment) -> None:
    from selenium.webdriver.common.by import By

    browser.get(deployment.url + "/auth/login")
    wait_for(lambda: browser.find_elements(By.NAME, "username"), "the login form")
    browser.find_element(By.NAME, "username").send_keys(deployment.user)
    browser.find_element(By.NAME, "password").send_keys(deployment.password)
    buttons(browser, "Sign in")[0].click()
    wait_for(lambda: "/auth/login" not in browser.current_url, "the login to go through")


def buttons(browser, text: str) -> list:
    """The buttons labelled ``text`` now (React re-renders: an element read mid-render is skipped)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    found = []
    for button in browser.find_elements(By.TAG_NAME, "button"):
        try:
            if button.text.strip() == text:
                found.append(button)
        except StaleElementReferenceException:
            continue
    return found


def settled(action, what: str, timeout: float = 30.0):
    """Run ``action`` until it gets through without meeting an element React has just replaced."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except StaleElementReferenceException:
            assert time.monotonic() < deadline, f"the page never settled for {what}"
            time.sleep(0.25)


def wait_for(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)
    return value


def test_the_ui_trigger_form_works_with_its_defaults(airflow_deployment, browser, storage) -> None:
    """Headless Chromium opens the trigger form of e2e3d_reconstruction, finds its Trigger button enabled
    with every default, triggers, and the run is created (and succeeds) as Airflow's REST API reports."""
    _ingest(storage, "terrain")
    airflow_deployment.wait_for_dag("e2e3d_reconstruction")
    _login(browser, airflow_deployment)
    browser.get(airflow_deployment.url + "/dags/e2e3d_reconstruction")
    settled(lambda: wait_for(lambda: buttons(browser, "Trigger"), "the Trigger button")[0].click(), "opening")
    wait_for(lambda: len(buttons(browser, "Trigger")) > 1, "the trigger form")
    time.sleep(1)  # let the form render its params and validate them

    def submit_state() -> tuple[bool, str | None]:
        submit = buttons(browser, "Trigger")[-1]
        browser.execute_script("arguments[0].scrollIntoView(true);", submit)
        return submit.is_enabled(), submit.get_attribute("disabled")

    enabled, disabled = settled(submit_state, "reading the form's Trigger button")
    assert enabled and disabled is None, "the form's Trigger button is disabled with the defaults"
    settled(lambda: buttons(browser, "Trigger")[-1].click(), "submitting the form")
    wait_for(lambda: "/runs/" in browser.current_url, "the new run's page")
    run_id = browser.current_url.rsplit("/runs/", 1)[1].split("?")[0]
    from urllib.parse import unquote

    run_id = unquote(run_id)
    assert airflow_deployment.wait_for_run("e2e3d_reconstruction", run_id, timeout=180) == "success"


def test_the_storage_dashboard_opens_from_the_ui_nav_with_the_ui_login(airflow_deployment, browser) -> None:
    """The real api-server lists the plugin's nav entry, and the UI's page for it frames the dashboard,
    which loads its data with the UI's own login cookie (no other sign-in)."""
    from selenium.webdriver.common.by import By

    plugins = airflow_deployment.get("/api/v2/plugins")["plugins"]
    (ours,) = [p for p in plugins if p["name"] == "e2e3d"]
    views = {v["name"]: v for v in ours["external_views"]}
    assert set(views) == {"E2E3D storage", "E2E3D viewer", "3D view"}, views
    view = views["E2E3D storage"]
    assert (view["href"], view["destination"], view["category"]) == ("/e2e3d/dashboard", "nav", "browse")
    viewer, tab = views["E2E3D viewer"], views["3D view"]
    assert (viewer["href"], viewer["destination"], viewer["category"]) == ("/e2e3d/viewer", "nav", "browse")
    # a tab of each DAG run: the UI puts the run's ids where the placeholders are
    assert (tab["href"], tab["destination"]) == ("/e2e3d/viewer?dag_id={DAG_ID}&run_id={RUN_ID}", "dag_run"), tab
    _login(browser, airflow_deployment)
    browser.get(f"{airflow_deployment.url}/plugin/{view['url_route']}")
    frame = wait_for(lambda: browser.find_elements(By.TAG_NAME, "iframe"), "the dashboard's frame", 60)[0]
    assert frame.get_attribute("src").endswith("/e2e3d/dashboard")
    browser.switch_to.frame(frame)
    try:
        state = wait_for(
            lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready"), "the dashboard", 90
        )
        assert state == "true", browser.find_element(By.ID, "error").text
        assert browser.find_elements(By.CSS_SELECTOR, "#chart-space svg.main-svg")
    finally:
        browser.switch_to.default_content()
