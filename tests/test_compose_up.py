"""docker-compose.yaml brought up for real, with podman and podman-compose, and the lifecycle run on it.

The compose file is used unchanged, through ``tests/compose/override.yaml`` only: it points postgres, minio and
redis at local stand-in images (``tests/compose/build_standins.sh`` builds them, and a stand-in of Airflow's
official image the repo's Dockerfile builds FROM, all without a container registry), health-checks MinIO with
curl (the stand-in has no ``mc``) and publishes the ports on free loopback ports.

Podman 4.3 and podman-compose 1.6 differ from Docker Compose in ways the test works around, as a user of them
would: health checks run from systemd timers (none here), so the test runs ``podman healthcheck run`` itself;
``depends_on`` conditions are not waited for, so the stack comes up in stages (``up -d --no-deps``), each
waited for: postgres and minio healthy, minio-init and airflow-init exited 0, then the Airflow services healthy.

Marked ``compose`` (deselected unless ``-m`` names it or ``E2E3D_TEST_COMPOSE=1``); needs root and podman::

    .venv/bin/pytest -m compose tests/test_compose_up.py
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from e2e3d_provider.core.layout import DEFAULT_BUCKETS, VERSIONED_BUCKETS
from e2e3d_provider.devstack import stack
from e2e3d_provider.devstack.airflow_deployment import AirflowDeployment

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "tests" / "compose"
BUILD_SCRIPT = HERE / "build_standins.sh"
OVERRIDE = HERE / "override.yaml"
DAG_ID = "e2e3d_reconstruction"
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
PASSWORDS_FILE = "/opt/airflow/simple_auth_manager_passwords.json.generated"  # SimpleAuthManager's, in AIRFLOW_HOME

pytestmark = [pytest.mark.compose, pytest.mark.timeout(3600)]


def log(message: str) -> None:
    print(f"[compose {time.strftime('%H:%M:%S')}] {message}", flush=True)


@pytest.fixture(scope="session")
def standins() -> dict[str, str]:
    """The stand-in images and podman-compose, built (or found up to date) by tests/compose/build_standins.sh;
    ``PODMAN_COMPOSE`` and ``CONTAINERS_CONF`` as it prints them."""
    if os.geteuid() != 0:
        pytest.fail(
            "the compose test runs rootful podman (and installs it when missing): run it as root", pytrace=False
        )
    start = time.monotonic()
    result = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, f"{BUILD_SCRIPT} failed:\n{result.stderr[-5000:]}"
    found = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    log(f"stand-ins ready in {time.monotonic() - start:.0f} s")
    return found


class Compose:
    """One podman-compose project of docker-compose.yaml + the override, run from the repository root with its
    own env file (the .env.example values, free ports) and project name; ``<project>_<service>_<n>`` containers."""

    def __init__(self, name: str, tools: dict[str, str], folder: Path, profiles: tuple[str, ...] = ()) -> None:
        self.name = name
        self.profiles = profiles
        self.podman_compose = tools["PODMAN_COMPOSE"]
        self.api_port, self.minio_port, console_port = stack.free_ports(3)
        executor = "CeleryExecutor" if "celery" in profiles else "LocalExecutor"
        self.env_file = write_env(
            folder / "compose.env", E2E3D_PUBLIC_S3_URL=f"http://localhost:{self.minio_port}", AIRFLOW_EXECUTOR=executor
        )
        self.values = dotenv(self.env_file)
        # the published ports, on loopback: a file of literal values (podman-compose interpolates no ${VAR} in
        # an !override, and without one a list is appended to the compose file's)
        self.ports_file = folder / "ports.yaml"
        self.ports_file.write_text(
            "services:\n"
            "  minio:\n"
            f'    ports: !override ["127.0.0.1:{self.minio_port}:9000", "127.0.0.1:{console_port}:9001"]\n'
            "  airflow-apiserver:\n"
            f'    ports: !override ["127.0.0.1:{self.api_port}:8080"]\n'
        )
        # the env file decides every variable the compose file uses: none comes from this process
        self.env = {k: v for k, v in os.environ.items() if k not in self.values and not k.startswith("COMPOSE_")}
        self.env["CONTAINERS_CONF"] = tools["CONTAINERS_CONF"]

    def command(self, *args: str) -> list[str]:
        profiles = [arg for profile in self.profiles for arg in ("--profile", profile)]
        return [
            self.podman_compose,
            *("-p", self.name, "--env-file", str(self.env_file), *profiles),
            *("-f", str(ROOT / "docker-compose.yaml"), "-f", str(OVERRIDE), "-f", str(self.ports_file)),
            *args,
        ]

    def run(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(*args), cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert result.returncode == 0, f"podman-compose {' '.join(args)} failed:\n{result.stderr[-5000:]}"
        return result

    def podman(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert result.returncode == 0, f"podman {' '.join(args)} failed:\n{result.stderr[-3000:]}"
        return result

    def container(self, service: str, number: int = 1) -> str:
        return f"{self.name}_{service}_{number}"

    def logs(self, container: str, lines: int = 40) -> str:
        result = self.podman("logs", "--tail", str(lines), container, check=False)
        return f"--- {container}:\n{result.stdout}{result.stderr}"

    def up(self, *services: str, scale: str | None = None) -> None:
        """``up -d --no-deps`` of these services (podman-compose waits for no dependency condition)."""
        self.run("up", "-d", "--no-deps", *(["--scale", scale] if scale else []), *services)

    def wait_exit(self, service: str, timeout: float = 600) -> None:
        """Wait until a one-shot service's container exits; it must exit 0."""
        container = self.container(service)
        code = self.podman("wait", container, timeout=timeout).stdout.strip()
        assert code == "0", f"{service} exited {code}\n{self.logs(container, 60)}"

    def wait_healthy(self, containers: list[str], timeout: float = 600) -> None:
        """Run each container's health check (podman runs none without systemd) until it passes."""
        deadline = time.monotonic() + timeout
        pending = list(containers)
        while pending:
            for container in list(pending):
                state = self.podman("inspect", "--format", "{{.State.Status}}", container, check=False).stdout.strip()
                assert state in ("running", "created", "configured", "initialized"), (
                    f"{container} is {state or 'gone'}\n{self.logs(container)}"
                )
                try:
                    check = self.podman("healthcheck", "run", container, timeout=60, check=False)
                except subprocess.TimeoutExpired:
                    continue
                if check.returncode == 0:
                    pending.remove(container)
            if pending:
                assert time.monotonic() < deadline, f"not healthy after {timeout:.0f} s: {pending}\n" + "\n".join(
                    self.logs(c) for c in pending
                )
                time.sleep(3)

    def build(self) -> None:
        """``build`` of the provider's image (e2e3d-airflow:local, every Airflow service's) from the repo's
        Dockerfile; the image it replaces is removed when nothing else tags or uses it."""
        image = "localhost/e2e3d-airflow:local"
        old = self.podman("image", "inspect", "--format", "{{.Id}}", image, check=False).stdout.strip()
        self.run("build", "airflow-apiserver", timeout=1800)
        new = self.podman("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()
        if old and old != new:
            self.podman("rmi", old, check=False)

    def containers(self) -> list[str]:
        out = self.podman(
            "ps", "-a", "--filter", f"label=io.podman.compose.project={self.name}", "--format", "{{.Names}}"
        )
        return sorted(out.stdout.split())

    def save_logs(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for container in self.containers():
            result = self.podman("logs", container, check=False)
            (folder / f"{container}.log").write_text(result.stdout + result.stderr)

    def remove(self) -> None:
        """Containers, volumes and network of the project, whatever state it is in."""
        self.run("down", "-v", "--remove-orphans", "-t", "10", check=False)
        for container in self.containers():
            self.podman("rm", "-f", container, check=False)
        volumes = self.podman(
            "volume", "ls", "-q", "--filter", f"label=io.podman.compose.project={self.name}", check=False
        ).stdout.split()
        for volume in volumes:
            self.podman("volume", "rm", "-f", volume, check=False)
        self.podman("network", "rm", "-f", f"{self.name}_default", check=False)


def dotenv(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if re.match(r"^[A-Z0-9_]+=", line))
    return {key: value for key, value in pairs}


def write_env(target: Path, **values: str) -> Path:
    """A .env as a user makes one (``deploy/new_env.py``: .env.example with fresh secrets), with ``values`` put
    in (replaced where it has them, appended otherwise)."""
    made = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "new_env.py")], capture_output=True, text=True, check=True, timeout=60
    )
    lines = made.stdout.splitlines()
    todo = dict(values)
    for i, line in enumerate(lines):
        key = line.split("=", 1)[0]
        if "=" in line and key in todo:
            lines[i] = f"{key}={todo.pop(key)}"
    lines += [f"{key}={value}" for key, value in todo.items()]
    target.write_text("\n".join(lines) + "\n")
    return target


@pytest.fixture
def project(request: pytest.FixtureRequest, standins: dict[str, str], tmp_path: Path) -> Iterator[Compose]:
    """A fresh compose project of its own name (any leftover of an earlier run removed first), on free loopback
    ports; always removed at the end (down -v, its volumes and network), its containers' logs kept in tmp_path."""
    celery = "celery" in request.node.name
    name = "e2e3d-compose-celery" if celery else "e2e3d-compose-test"
    compose = Compose(name, standins, tmp_path, ("celery",) if celery else ())
    compose.remove()
    try:
        yield compose
    finally:
        compose.save_logs(tmp_path / "logs")
        log(f"container logs kept in {tmp_path / 'logs'}")
        compose.remove()


class ComposeAirflow(AirflowDeployment):
    """The REST client of :class:`AirflowDeployment` (token, get/post/patch, trigger, wait_for_run, task states),
    pointed at the compose stack's api-server: it needs only ``port``, ``user`` and ``password``."""

    def __init__(self, port: int, user: str, password: str) -> None:  # no deployment of its own to set up
        self.port, self.user, self.password, self._token = port, user, password, None


def airflow_api(compose: Compose) -> ComposeAirflow:
    """The admin's REST client: SimpleAuthManager generated the password at the api-server's first start."""
    output = compose.podman("exec", compose.container("airflow-apiserver"), "cat", PASSWORDS_FILE).stdout
    user = compose.values["AIRFLOW_USERS"].split(",")[0].split(":")[0]
    return ComposeAirflow(compose.api_port, user, json.loads(output)[user])


def bring_up(compose: Compose, workers: int = 0) -> dict[str, float]:
    """The stack in stages, as depends_on says (podman-compose does not wait for its conditions); the seconds
    each stage took."""
    times: dict[str, float] = {}
    start = time.monotonic()
    first = ["postgres", "minio", *(["redis"] if workers else [])]
    compose.up(*first)
    compose.wait_healthy([compose.container(s) for s in first])
    times["postgres+minio healthy"] = time.monotonic() - start
    for one_shot in ("minio-init", "airflow-init"):
        mark = time.monotonic()
        compose.up(one_shot)
        compose.wait_exit(one_shot)
        times[f"{one_shot} done"] = time.monotonic() - mark
    mark = time.monotonic()
    compose.up(*AIRFLOW_SERVICES)
    long_running = [compose.container(s) for s in AIRFLOW_SERVICES]
    if workers:
        compose.up("airflow-worker", scale=f"airflow-worker={workers}")
        long_running += [compose.container("airflow-worker", n) for n in range(1, workers + 1)]
    compose.wait_healthy(long_running)
    times["airflow healthy"] = time.monotonic() - mark
    log("up: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    return times


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as answer:
        return answer.read()


def check_bootstrap(compose: Compose) -> None:
    """minio-init's work: the buckets, versioning and the lifecycle rule, and each role a MinIO user that MinIO
    holds to its grant."""
    from minio import Minio
    from minio.error import S3Error

    from e2e3d_provider.core.roles import GRANTS
    from e2e3d_provider.hooks.storage import LIFECYCLE_RULE_ID

    v = compose.values
    endpoint = f"127.0.0.1:{compose.minio_port}"

    def client(user: str, password: str) -> Minio:
        return Minio(endpoint, access_key=user, secret_key=password, secure=False, region="us-east-1")

    root = client(v["MINIO_ROOT_USER"], v["MINIO_ROOT_PASSWORD"])
    assert {b.name for b in root.list_buckets()} >= set(DEFAULT_BUCKETS)
    for bucket in VERSIONED_BUCKETS:
        assert root.get_bucket_versioning(bucket).status == "Enabled", bucket
        rules = {r.rule_id: r for r in root.get_bucket_lifecycle(bucket).rules}
        rule = rules[LIFECYCLE_RULE_ID].noncurrent_version_expiration
        assert rule.noncurrent_days == int(v["E2E3D_NONCURRENT_DAYS"]), bucket
    for role, grants in GRANTS.items():  # each role's user exists with its connection's keys
        user = client(v[f"MINIO_{role.upper()}_USER"], v[f"MINIO_{role.upper()}_PASSWORD"])
        for bucket in grants:
            list(user.list_objects(bucket))
    worker = client(v["MINIO_WORKER_USER"], v["MINIO_WORKER_PASSWORD"])
    with pytest.raises(S3Error) as refused:
        worker.put_object("input", f"refused-{uuid.uuid4().hex[:8]}", io.BytesIO(b"x"), 1)
    assert refused.value.code == "AccessDenied"
    with pytest.raises(S3Error) as refused:
        list(worker.list_objects("archive"))
    assert refused.value.code == "AccessDenied"


def ingest_sample(compose: Compose, dataset: str) -> None:
    """The package's sample images, ingested from inside the api-server's container with ``e2e3d ingest`` and
    the ingest role's keys, given to that one command as an operator would: no service holds them (each has
    only its component's connections)."""
    container = compose.container("airflow-apiserver")
    sample = compose.podman(
        "exec", container, "python", "-c", "from e2e3d_provider.devstack.demo import SAMPLE_DIR; print(SAMPLE_DIR)"
    ).stdout.strip()
    v = compose.values
    ingest = {
        "conn_type": "aws",
        "login": v["MINIO_INGEST_USER"],
        "password": v["MINIO_INGEST_PASSWORD"],
        "extra": {"endpoint_url": "http://minio:9000", "region_name": "us-east-1"},
    }
    role = f"AIRFLOW_CONN_MINIO_INGEST={json.dumps(ingest)}"
    compose.podman("exec", "-e", role, container, "e2e3d", "ingest", sample, "--dataset", dataset, timeout=300)


def run_lifecycle(api: ComposeAirflow, dataset: str, job_id: str) -> str:
    """Trigger the lifecycle DAG through the REST API and wait for it to succeed; the run id."""
    api.wait_for_dag(DAG_ID, timeout=300)
    api.unpause(DAG_ID)
    run_id = api.trigger(DAG_ID, {"dataset": dataset, "job_id": job_id})
    state = api.wait_for_run(DAG_ID, run_id, timeout=1200, poll=3)
    if state != "success":
        states = api.task_states(DAG_ID, run_id)
        logs = []
        for task, task_state in states.items():
            if task_state in ("failed", "up_for_retry", "upstream_failed"):
                try:
                    logs.append(f"--- {task}:\n{api.task_log(DAG_ID, run_id, task)[-3000:]}")
                except Exception as err:  # the log is a help, not the finding
                    logs.append(f"--- {task}: no log ({err})")
        raise AssertionError(f"{DAG_ID} run {run_id} ended {state}: {states}\n" + "\n".join(logs))
    return run_id


def check_task_log(api: ComposeAirflow, run_id: str, job_id: str) -> None:
    """A task's log as the UI shows it: the api-server reads it from the log server of the container the task
    ran in (no log volume is shared), which must resolve on the compose network and accept the api-server's
    signature (the same ``[api] secret_key``)."""
    text = api.task_log(DAG_ID, run_id, "prepare")
    assert "Done. Returned value was" in text and repr(job_id) in text, text[-3000:]


def check_results(compose: Compose, api: ComposeAirflow, job_id: str) -> dict[str, str]:
    """The results API hands out URLs a host reaches (the public S3 URL, not http://minio:9000), and each
    fetches the bytes the answer's sha256 names; path -> sha256."""
    answer = api.get(f"/e2e3d/api/v1/jobs/{quote(job_id)}/results")
    assert answer["job_id"] == job_id and answer["files"], answer
    public = urlsplit(compose.values["E2E3D_PUBLIC_S3_URL"])
    assert answer["mesh"] and answer["texture"], answer
    seen = {}
    for entry in answer["files"]:
        url = urlsplit(entry["url"])
        assert (url.scheme, url.netloc) == (public.scheme, public.netloc), entry["url"]
        data = fetch(entry["url"])
        assert len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]
        seen[entry["path"]] = entry["sha256"]
    return seen


def test_compose_stack_runs_the_lifecycle_and_keeps_its_data_across_down_and_up(project: Compose) -> None:
    start = time.monotonic()
    times: dict[str, float] = {}

    def stage(name: str, since: float) -> float:
        times[name] = time.monotonic() - since
        log(f"{name}: {times[name]:.0f} s")
        return time.monotonic()

    mark = time.monotonic()
    project.build()
    mark = stage("build e2e3d-airflow:local", mark)
    bring_up(project)
    mark = stage("first up (staged, healthy)", mark)

    # the dags bind mount (./dags is a symlink to the package's example DAGs) and the shared data root
    listing = project.podman("exec", project.container("airflow-dag-processor"), "ls", "/opt/airflow/dags").stdout
    assert "e2e3d_reconstruction.py" in listing.split(), listing
    for service in ("airflow-scheduler", "airflow-apiserver"):
        project.podman("exec", project.container(service), "test", "-w", "/app/data")

    check_bootstrap(project)
    mark = stage("bootstrap checked", mark)

    api = airflow_api(project)
    ingest_sample(project, "terrain")
    job_id = f"compose-{uuid.uuid4().hex[:8]}"
    run_id = run_lifecycle(api, "terrain", job_id)
    mark = stage("lifecycle run", mark)
    check_task_log(api, run_id, job_id)
    published = check_results(project, api, job_id)
    mark = stage("results fetched", mark)

    project.run("down", timeout=600)  # no -v: the named volumes stay
    assert not project.containers()
    mark = stage("down", mark)
    bring_up(project)
    mark = stage("second up (staged, healthy)", mark)
    api = airflow_api(project)  # a new api-server container, a new generated password
    assert check_results(project, api, job_id) == published
    stage("results after down/up", mark)
    log(f"whole test: {time.monotonic() - start:.0f} s; " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))


def test_compose_celery_profile_runs_the_lifecycle_on_two_workers(project: Compose) -> None:
    start = time.monotonic()
    project.build()
    bring_up(project, workers=2)
    assert project.values["AIRFLOW_EXECUTOR"] == "CeleryExecutor"
    api = airflow_api(project)
    ingest_sample(project, "terrain")
    job_id = f"compose-celery-{uuid.uuid4().hex[:8]}"
    run_id = run_lifecycle(api, "terrain", job_id)
    check_task_log(api, run_id, job_id)
    check_results(project, api, job_id)
    workers = {
        project.podman(
            "inspect", "--format", "{{.Config.Hostname}}", project.container("airflow-worker", n)
        ).stdout.strip()
        for n in (1, 2)
    }
    hosts = {ti["hostname"] for ti in api.task_instances(DAG_ID, run_id) if ti["state"] == "success"}
    assert hosts and hosts <= workers, (hosts, workers)  # every task ran on a Celery worker
    log(f"whole celery test: {time.monotonic() - start:.0f} s; tasks ran on {sorted(hosts)}")
