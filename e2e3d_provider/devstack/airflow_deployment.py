"""A real Airflow deployment on the embedded stack: api-server, scheduler, dag-processor, triggerer.

Each component runs as its own process (``airflow <component>``), with LocalExecutor, Airflow's metadata
in its own database of the stack's PostgreSQL, SimpleAuthManager with one admin whose password the
harness generates, and every listener on 127.0.0.1. The same class serves ``e2e3d airflow`` and the
tests' session fixture; it also offers a small REST client for the public API (``/api/v2``).

Airflow facts this relies on (Airflow 3.3):

- the log servers (``[logging] worker_log_server_port`` for LocalExecutor in the scheduler,
  ``trigger_log_server_port`` in the triggerer) always bind every interface (``host=""``); there is
  no host option, so the components run with ``--skip-serve-logs``: on one host the api-server reads
  the task and trigger logs from the shared log folder. The ports are still set to free ones.
- SimpleAuthManager reads ``[core] simple_auth_manager_users`` (``user:role``) and keeps passwords
  in ``[core] simple_auth_manager_passwords_file`` (JSON, user -> password); writing that file
  first makes the password known. ``POST /auth/token`` with ``{"username", "password"}`` returns a JWT.
- task processes reach the api-server through ``[core] execution_api_server_url``.
- ``GET /api/v2/monitor/health`` needs no login and reports the metadatabase, scheduler, triggerer
  and dag-processor (by heartbeat).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from e2e3d_provider.devstack.stack import (
    DEFAULT_STACK_DIR_ENV,
    EMBEDDED_VACUUM,
    VOLUME_VACUUM_ENV,
    StackInfo,
    free_ports,
    pid_alive,
)
from e2e3d_provider.exceptions import StackError

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: components that would start a log server on every interface unless told not to
SKIP_SERVE_LOGS = ("scheduler", "triggerer")
HEALTH_PATH = "/api/v2/monitor/health"
MARKER_ENV = "DEVSTACK_AIRFLOW_DEPLOYMENT"  # not E2E3D_*: test_compose lists those the product reads
TERMINAL_RUN_STATES = ("success", "failed")
DEFAULT_USER = "admin"


class AirflowDeployment:
    """Airflow 3 running as separate processes against the embedded stack, plus a small REST client.

    ``start()`` creates the deployment's database, migrates it, starts the api-server, scheduler,
    dag-processor and triggerer and waits until all report healthy; ``restart(component)`` starts one
    that exited again, as it was (same ports, same environment); ``stop()`` ends every process it started
    (process groups; SIGTERM, then SIGKILL). Use it as a context manager to get start and stop.
    """

    def __init__(
        self,
        stack_info: StackInfo,
        home: Path,
        dags_folders: list[Path],
        data_root: Path,
        *,
        user: str = DEFAULT_USER,
        database: str | None = None,
        parallelism: int = 4,
        extra_env: dict[str, str] | None = None,
        owner_pid: int | None = None,
        workers: dict[str, list[str]] | None = None,
    ) -> None:
        if not dags_folders:
            raise ValueError("at least one DAGs folder is needed")
        self.stack_info = stack_info
        self.home = Path(home).resolve()
        self.dags_folders = [Path(p).resolve() for p in dags_folders]
        self.data_root = Path(data_root).resolve()
        self.user = user
        suffix = hashlib.sha256(str(self.home).encode()).hexdigest()[:10]
        self.database = database or f"airflow_{suffix}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", self.database):
            raise ValueError(f"invalid database name {self.database!r}")
        self.parallelism = parallelism
        self.extra_env = dict(extra_env or {})
        self.owner_pid = owner_pid
        #: CeleryExecutor workers: hostname -> the queues it serves; each runs in its own UTS + mount
        #: namespace (its own hostname) with a private tmpfs as its data root (no disk shared with the others)
        self.workers = dict(workers or {})
        self.marker = secrets.token_hex(8)
        self.password = ""
        self.port = 0
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        #: sessions of components that exited and were restarted, where processes of theirs may still run
        #: (a killed scheduler's LocalExecutor workers finishing a task): stop() ends them too
        self.retired_sessions: set[int] = set()
        self.watchdog_pid: int | None = None
        self.start_seconds: float | None = None
        self._env: dict[str, str] = {}
        self._token: str | None = None

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        """The api-server's base URL (the UI is here too)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def airflow(self) -> str:
        """The ``airflow`` script beside this Python."""
        return str(Path(sys.executable).parent / "airflow")

    @property
    def sql_alchemy_conn(self) -> str:
        info = self.stack_info
        return (
            f"postgresql+psycopg2://{quote(info.pg_user, safe='')}:{quote(info.pg_password, safe='')}"
            f"@127.0.0.1:{info.pg_port}/{self.database}"
        )

    @property
    def env(self) -> dict[str, str]:
        """The environment every component (and anything run against this deployment) gets."""
        if not self._env:
            raise StackError("the deployment has no environment before start()")
        return dict(self._env)

    def log_path(self, component: str) -> Path:
        """Where a component's stdout and stderr go."""
        return self.home / f"{component}.log"

    # ------------------------------------------------------------------ set-up

    def _password(self) -> str:
        """The admin password: kept in the passwords file (0600) so a restart in the same home reuses it."""
        path = self.home / "simple_auth_manager_passwords.json"
        try:
            saved = json.loads(path.read_text())
            if isinstance(saved, dict) and isinstance(saved.get(self.user), str):
                return saved[self.user]
        except (OSError, ValueError):
            pass
        password = secrets.token_urlsafe(16)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({self.user: password}, handle)
        return password

    def _secret(self, name: str, nbytes: int) -> str:
        """A random secret made once per home (0600), so restarts keep sessions and tokens valid."""
        path = self.home / f".{name}"
        try:
            value = path.read_text().strip()
            if value:
                return value
        except OSError:
            pass
        value = secrets.token_urlsafe(nbytes)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value)
        return value

    def create_database(self) -> None:
        """``CREATE DATABASE`` the deployment's own database in the stack's PostgreSQL, if missing."""
        import psycopg2

        info = self.stack_info
        conn = psycopg2.connect(
            host="127.0.0.1", port=info.pg_port, user=info.pg_user, password=info.pg_password, dbname="postgres"
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            conn.close()

    def build_env(self) -> dict[str, str]:
        """The components' environment: inherited Airflow settings are dropped, ours set."""
        api_port, worker_log_port, trigger_log_port, health_port = free_ports(4)
        self.port = api_port
        self.password = self._password()
        bundles = [
            {
                "name": f"{index}-{re.sub(r'[^A-Za-z0-9_-]', '_', folder.name)}",
                "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(folder)},
            }
            for index, folder in enumerate(self.dags_folders)
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))}
        env.pop("AIRFLOW_HOME", None)
        env.update(
            {
                MARKER_ENV: self.marker,
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.sql_alchemy_conn,
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor" if self.workers else "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folders[0]),
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.user}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(
                    self.home / "simple_auth_manager_passwords.json"
                ),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "2",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "300",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "1",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(health_port),
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(worker_log_port),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_log_port),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(api_port),
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__SECRET_KEY": self._secret("api_secret_key", 32),
                "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("jwt_secret", 64),  # HS512 wants >= 64 bytes
                "AIRFLOW__METRICS__STATSD_ON": "False",
                "E2E3D_DATA_ROOT": str(self.data_root),
                DEFAULT_STACK_DIR_ENV: self.stack_info.base_dir,  # the stack whose volumes maintenance compacts
                VOLUME_VACUUM_ENV: EMBEDDED_VACUUM,  # [e2e3d] volume_vacuum: how it compacts them
                "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", str(self.home)),
            }
        )
        if self.workers:  # broker and results in the deployment's own database (kombu's SQLAlchemy transport)
            database = self.sql_alchemy_conn.split("://", 1)[1]
            env["AIRFLOW__CELERY__BROKER_URL"] = f"sqla+postgresql://{database}"
            env["AIRFLOW__CELERY__RESULT_BACKEND"] = f"db+postgresql://{database}"
            env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] = "2"
        # the deployment's own environment (what the harness runs against it) holds every connection; each
        # component gets only its own share of them (component_env)
        env.update({k: v for k, v in self.stack_info.env().items() if k.startswith("AIRFLOW_CONN_")})
        env.update(self.extra_env)
        self._env = env
        return env

    def component_env(self, component: str) -> dict[str, str]:
        """What ``component`` (``api-server``, ``scheduler``, ``celery-worker``, ...) is started with: the
        deployment's settings and only the connections that component is given
        (:data:`~e2e3d_provider.hooks.COMPONENT_CONN_IDS`): no component holds the admin's keys."""
        env = {k: v for k, v in self._env.items() if not k.startswith("AIRFLOW_CONN_")}
        env.update({k: v for k, v in self.stack_info.env(component).items() if k.startswith("AIRFLOW_CONN_")})
        env.update({k: v for k, v in self.extra_env.items() if k.startswith("AIRFLOW_CONN_")})
        return env

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 300.0) -> AirflowDeployment:
        """Create and migrate the database, start every component, wait until all are healthy."""
        started = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)
        self.data_root.mkdir(parents=True, exist_ok=True)
        try:
            self.create_database()
            env = self.build_env()
            migrate_log = self.log_path("db-migrate")
            with open(migrate_log, "wb") as log:
                result = subprocess.run(
                    [self.airflow, "db", "migrate"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.home,
                    timeout=max(60.0, timeout),
                    check=False,
                )
            if result.returncode != 0:
                raise StackError(f"airflow db migrate failed; {migrate_log} ends with:\n{_tail(migrate_log)}")
            for component in COMPONENTS:
                self._launch(component)
            self.wait_healthy(timeout=max(30.0, timeout - (time.monotonic() - started)))
            for hostname in self.workers:  # one at a time: the first creates the broker's tables
                self._launch_worker(hostname)
                self.wait_workers([hostname], timeout=max(30.0, timeout - (time.monotonic() - started)))
            self._start_watchdog()  # (stop() below ends everything if start-up fails before it)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def _launch(self, component: str) -> None:
        args = [self.airflow, component]
        if component == "api-server":
            args += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        if component in SKIP_SERVE_LOGS:
            args.append("--skip-serve-logs")
        with open(self.log_path(component), "ab") as log:
            self.processes[component] = subprocess.Popen(
                args,
                env=self.component_env(component),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.home,
                start_new_session=True,  # its own process group: stop() ends it with all its children
            )

    def worker_root(self, hostname: str) -> Path:
        """The data root a worker sees: a private tmpfs inside its namespace (this folder stays empty here)."""
        return self.home / "hosts" / hostname

    def _launch_worker(self, hostname: str) -> None:
        """A Celery worker in its own UTS + mount namespace: its own hostname, and a tmpfs over its data
        root that no other process sees (root is needed for the namespaces, as in CI)."""
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,30}", hostname):
            raise ValueError(f"invalid worker hostname {hostname!r}")
        root = self.worker_root(hostname)
        root.mkdir(parents=True, exist_ok=True)
        queues = ",".join(self.workers[hostname])
        script = (
            f"hostname {hostname} && mount -t tmpfs -o mode=0700 tmpfs {shlex.quote(str(root))} && "
            f"exec {shlex.quote(self.airflow)} celery worker --celery-hostname {hostname} --queues {queues} "
            "--concurrency 2 --skip-serve-logs"
        )
        env = dict(self.component_env("celery-worker"), E2E3D_DATA_ROOT=str(root))
        with open(self.log_path(f"worker-{hostname}"), "ab") as log:
            self.processes[f"worker-{hostname}"] = subprocess.Popen(
                ["unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c", script],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.home,
                start_new_session=True,
            )

    def wait_workers(self, hostnames: list[str] | None = None, timeout: float = 120.0) -> None:
        """Wait until the Celery workers say they are ready (the log's ``celery@<hostname> ready.``)."""
        deadline = time.monotonic() + timeout
        for hostname in hostnames or list(self.workers):
            log = self.log_path(f"worker-{hostname}")
            while f"celery@{hostname} ready" not in log.read_text(errors="replace"):
                proc = self.processes[f"worker-{hostname}"]
                if proc.poll() is not None:
                    raise StackError(f"celery worker {hostname} exited with code {proc.returncode}:\n{_tail(log)}")
                if time.monotonic() > deadline:
                    raise StackError(f"celery worker {hostname} was not ready in {timeout:.0f} s:\n{_tail(log)}")
                time.sleep(0.5)

    def _start_watchdog(self) -> None:
        """With an owner PID, a watchdog ends the deployment's processes once the owner is gone."""
        if not self.owner_pid:
            return
        env = {k: v for k, v in self._env.items() if k != MARKER_ENV and not k.startswith("AIRFLOW_CONN_")}
        sessions = ",".join(str(pid) for pid in sorted(self.sessions))
        self.watchdog_pid = subprocess.Popen(
            [sys.executable, "-m", __name__, "watchdog", str(self.owner_pid), self.marker, sessions],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        ).pid

    def restart(self, component: str) -> None:
        """Start ``component`` (a key of :attr:`processes`) again after it exited: the same command line,
        environment and ports, so the UI's address and everything the others know stay valid.

        What the old process left in its session is ended first (an api-server's worker would hold its
        port), except for the scheduler: its LocalExecutor workers may be running a task, which finishes
        and reports through the api-server; they end with the deployment (:attr:`retired_sessions`).
        """
        proc = self.processes[component]
        if proc.poll() is None:
            raise StackError(f"airflow {component} is still running (pid {proc.pid}): it needs no restart")
        if component == "scheduler":
            self.retired_sessions.add(proc.pid)
        else:
            _signal_group(proc.pid, signal.SIGKILL)
        if component.startswith("worker-"):
            self._launch_worker(component.removeprefix("worker-"))
        else:
            self._launch(component)
        if self.watchdog_pid:  # the watchdog knows the sessions it ends: give it the new one
            self._stop_watchdog()
            self._start_watchdog()

    @property
    def sessions(self) -> set[int]:
        """The session ids of the components (each starts its own session; its children stay in it), and of
        those restarted (:attr:`retired_sessions`)."""
        return {proc.pid for proc in self.processes.values()} | self.retired_sessions

    def failed_components(self) -> dict[str, int]:
        """Components that exited, with their exit codes."""
        return {name: code for name, proc in self.processes.items() if (code := proc.poll()) is not None}

    def health(self) -> dict[str, Any]:
        """``GET /api/v2/monitor/health`` (no login needed)."""
        with urllib.request.urlopen(self.url + HEALTH_PATH, timeout=5) as response:
            return json.loads(response.read())

    def wait_healthy(self, timeout: float = 180.0) -> dict[str, Any]:
        """Wait until the metadatabase, scheduler, triggerer and dag-processor all report healthy."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            failed = self.failed_components()
            if failed:
                name, code = next(iter(failed.items()))
                raise StackError(
                    f"airflow {name} exited with code {code} during start-up; {self.log_path(name)} ends with:\n"
                    f"{_tail(self.log_path(name))}"
                )
            try:
                health = self.health()
                last = health
                parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
                if all((health.get(part) or {}).get("status") == "healthy" for part in parts):
                    return health
            except (OSError, ValueError) as err:
                last = err
            time.sleep(0.5)
        raise StackError(f"Airflow did not become healthy within {timeout:.0f}s; last health: {last}")

    def stop(self, timeout: float = 20.0) -> None:
        """End every process of the deployment: SIGTERM to each process group, SIGKILL after ``timeout``."""
        for proc in self.processes.values():
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        # the groups again (children that outlived their parent), then anything carrying our marker
        for proc in self.processes.values():
            _signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        kill_deployment(self.marker, self.sessions, timeout=5.0)
        self.processes.clear()
        self.retired_sessions.clear()
        self._stop_watchdog()

    def _stop_watchdog(self) -> None:
        if self.watchdog_pid and pid_alive(self.watchdog_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.watchdog_pid, signal.SIGTERM)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.watchdog_pid, 0)
        self.watchdog_pid = None

    def pids(self) -> list[int]:
        """Every live process of this deployment (the components and their children)."""
        return deployment_pids(self.marker, self.sessions)

    def listening_addresses(self) -> list[tuple[str, int]]:
        """(address, port) of every TCP socket the deployment's processes listen on."""
        inodes: set[str] = set()
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        target = os.readlink(f"/proc/{pid}/fd/{fd}")
                        if target.startswith("socket:["):
                            inodes.add(target[8:-1])
        found = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as handle:
                for line in handle.readlines()[1:]:
                    fields = line.split()
                    if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                        found.append(_decode_address(fields[1]))
        return found

    def __enter__(self) -> AirflowDeployment:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ REST client

    def token(self, refresh: bool = False) -> str:
        """A JWT for the admin user (``POST /auth/token``), cached."""
        if self._token is None or refresh:
            body = self._request("POST", "/auth/token", {"username": self.user, "password": self.password}, auth=False)
            self._token = str(body["access_token"])
        return self._token

    def _request(self, method: str, path: str, payload: Any = None, auth: bool = True) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        for attempt in (1, 2):
            headers = {"Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            if auth:
                headers["Authorization"] = f"Bearer {self.token(refresh=attempt == 2)}"
            request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    raw = response.read()
                    return json.loads(raw) if raw else None
            except urllib.error.HTTPError as err:
                if err.code == 401 and auth and attempt == 1:
                    continue
                detail = err.read().decode(errors="replace")[:2000]
                raise ApiError(method, path, err.code, detail) from None
        raise AssertionError("unreachable")

    def get(self, path: str) -> Any:
        """GET ``path`` (e.g. ``/api/v2/dags``); the parsed JSON body."""
        return self._request("GET", path)

    def post(self, path: str, json_body: Any) -> Any:
        """POST JSON to ``path``; the parsed JSON body."""
        return self._request("POST", path, json_body)

    def patch(self, path: str, json_body: Any) -> Any:
        """PATCH JSON to ``path``; the parsed JSON body."""
        return self._request("PATCH", path, json_body)

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until the dag-processor has parsed ``dag_id`` and the API lists it; its DAG record."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                return dict(self.get(f"/api/v2/dags/{quote(dag_id, safe='')}"))
            except ApiError as err:
                if err.status != 404:
                    raise
                last = err
            time.sleep(1.0)
        errors = self.get("/api/v2/importErrors")
        raise StackError(f"DAG {dag_id} did not appear within {timeout:.0f}s ({last}); import errors: {errors}")

    def unpause(self, dag_id: str) -> None:
        """Unpause ``dag_id`` (new DAGs start paused)."""
        self.patch(f"/api/v2/dags/{quote(dag_id, safe='')}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Trigger a manual run of ``dag_id`` with ``conf``; its run id."""
        body = self.post(f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns", {"logical_date": None, "conf": conf or {}})
        return str(body["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        """The state of one DAG run."""
        body = self.get(f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}")
        return str(body["state"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 180.0, poll: float = 1.0) -> str:
        """Wait until a run is finished (success or failed) or ``timeout`` passed; its last state."""
        deadline = time.monotonic() + timeout
        state = self.run_state(dag_id, run_id)
        while state not in TERMINAL_RUN_STATES and time.monotonic() < deadline:
            time.sleep(poll)
            state = self.run_state(dag_id, run_id)
        return state

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The task instances of one run, as the API returns them."""
        path = f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances?limit=1000"
        return list(self.get(path)["task_instances"])

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """One try's log as the UI shows it (the task's own log and its triggers' logs), one JSON line per entry."""
        path = (
            f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
            f"{quote(task_id, safe='')}/logs/{try_number}?full_content=true"
        )
        content = self.get(path).get("content") or []
        if isinstance(content, str):
            return content
        return "\n".join(entry if isinstance(entry, str) else json.dumps(entry) for entry in content)

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """task_id -> state for one run."""
        return {ti["task_id"]: ti["state"] for ti in self.task_instances(dag_id, run_id)}


class ApiError(StackError):
    """An Airflow REST call answered with an HTTP error."""

    def __init__(self, method: str, path: str, status: int, detail: str) -> None:
        super().__init__(f"{method} {path} -> HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------


def write_pinned_lifecycle(folder: Path, lifecycle_file: Path, queues: dict[str, str], default_queue: str) -> Path:
    """A DAG file that is the lifecycle DAG of ``lifecycle_file`` with its tasks pinned to queues (task id ->
    queue; every other task on ``default_queue``): how a deployment puts a run's tasks on chosen hosts."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "e2e3d_pinned_lifecycle.py"
    target.write_text(
        "# an Airflow DAG file (the dag-processor's safe mode reads only files that say both words)\n"
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('e2e3d_lifecycle', {str(lifecycle_file)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "lifecycle = module.lifecycle_dag\n"
        f"queues = {dict(queues)!r}\n"
        "for task in lifecycle.tasks:\n"
        f"    task.queue = queues.get(task.task_id, {default_queue!r})\n"
    )
    return target


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def deployment_pids(marker: str, sessions: set[int]) -> list[int]:
    """Live processes in one of ``sessions`` or whose environment carries ``MARKER_ENV=marker``.

    Both, because components rename themselves (setproctitle), which can overwrite what
    ``/proc/<pid>/environ`` shows, and a child may leave its parent's session.
    """
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                state, _ppid, _pgrp, session = handle.read().rsplit(")", 1)[1].split()[:4]
            if state == "Z":
                continue
            if int(session) in sessions:
                found.append(int(entry))
                continue
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if needle in handle.read().split(b"\0"):
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def kill_deployment(marker: str, sessions: set[int], timeout: float = 5.0) -> None:
    """SIGTERM every process of the deployment, SIGKILL what is left after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = deployment_pids(marker, sessions)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
            for pid in pids:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)


def _decode_address(hex_address: str) -> tuple[str, int]:
    """``/proc/net/tcp{,6}`` "ADDR:PORT" (hex, little-endian words) -> (address, port)."""
    import ipaddress

    address, port = hex_address.split(":")
    raw = bytes.fromhex(address)
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(packed)), int(port, 16)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def watchdog(owner_pid: int, marker: str, sessions: set[int], interval: float = 0.5) -> None:
    """End the deployment's processes once ``owner_pid`` has exited."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while pid_alive(owner_pid):
        time.sleep(interval)
    kill_deployment(marker, sessions)


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "watchdog":
    watchdog(int(sys.argv[2]), sys.argv[3], {int(s) for s in sys.argv[4].split(",") if s})
