"""``e2e3d airflow``: a real Airflow 3 on the embedded stack in one command, until Ctrl-C.

The stack (started here unless one runs in the directory), buckets, schema and the sample dataset,
then :class:`~e2e3d_provider.devstack.airflow_deployment.AirflowDeployment` with the repository's
DAGs; what a user needs to log in and connect is printed. While it runs, a component that exits (or a
server of the stack that dies) is started again on the same ports, at most a few times in a few minutes
(:mod:`~e2e3d_provider.devstack.supervisor`); a SIGTERM to one component is therefore not the end of
the others. SIGINT (Ctrl-C) or SIGTERM to this command stops what was started.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from pathlib import Path

from e2e3d_provider.devstack import stack
from e2e3d_provider.devstack.airflow_deployment import AirflowDeployment
from e2e3d_provider.devstack.demo import SAMPLE_DATASET, SAMPLE_DIR, VIEWER_PATH, dags_dir
from e2e3d_provider.devstack.supervisor import GaveUp, RestartBudget, Supervisor
from e2e3d_provider.exceptions import StackError


def run_local_airflow(
    base: Path,
    *,
    user: str = "admin",
    extra_dags: list[Path] | None = None,
    dir_given: bool = False,
    budget: RestartBudget | None = None,
) -> int:
    """Serve Airflow on the stack in ``base`` until interrupted, restarting what exits within ``budget``;
    the exit code (0 after Ctrl-C, 1 when a component kept exiting or the stack was stopped)."""
    ours = not stack.partly_running(stack.read_state(base))  # stop only a stack this command started
    print(f"starting the local stack in {base} (SeaweedFS S3 + PostgreSQL on 127.0.0.1)", flush=True)
    info = stack.start_stack(base, owner_pid=os.getpid() if ours else None)
    deployment: AirflowDeployment | None = None

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # both, explicitly: a background job of a non-interactive shell starts with SIGINT ignored
    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        os.environ.update(info.env())
        os.environ.setdefault("AIRFLOW_HOME", str(base / "airflow"))  # this process's own Airflow imports
        from e2e3d_provider.hooks.metadata import MetadataHook
        from e2e3d_provider.hooks.storage import StorageHook
        from e2e3d_provider.lifecycle.inputs.ingest import ingest

        storage = StorageHook()
        storage.bootstrap()
        MetadataHook().migrate()
        uploaded = ingest(storage, SAMPLE_DIR, SAMPLE_DATASET)
        print(f"buckets and schema ready; sample dataset '{SAMPLE_DATASET}': {uploaded.total_files} images", flush=True)
        print("starting Airflow (db migrate, api-server, scheduler, dag-processor, triggerer) ...", flush=True)
        deployment = AirflowDeployment(
            info, base / "airflow", [dags_dir(), *(extra_dags or [])], info.data_root, user=user
        )
        deployment.start()
        env_hint = f"e2e3d stack env{' --dir ' + shlex.quote(str(base)) if dir_given else ''}"
        print(f"\nAirflow is up after {deployment.start_seconds:.0f}s (every component healthy)")
        print(f"  UI / API:     {deployment.url}")
        print(f"  3D viewer:    {deployment.url}{VIEWER_PATH} (a job: ?job=<job id>)")
        print(f"  login:        {deployment.user} / {deployment.password}")
        print(f"  AIRFLOW_HOME: {deployment.home} (component logs: *.log there)")
        print(f"  data root:    {deployment.data_root}")
        print(f'  connections:  eval "$({env_hint})"')
        print(f'  trigger:      e2e3d_reconstruction with {{"dataset": "{SAMPLE_DATASET}", "job_id": "my-job"}}')
        print("Ctrl-C stops Airflow" + (" and the stack" if ours else " (the stack keeps running)"), flush=True)
        supervisor = Supervisor(deployment, base, budget, say=lambda line: print(line, flush=True))
        while True:
            time.sleep(1)
            try:
                supervisor.check()
            except GaveUp as err:
                print(f"e2e3d: error: {err}. Stopping everything.", file=sys.stderr, flush=True)
                return 1
            except StackError as err:
                print(f"e2e3d: error: {err}; Airflow cannot run without it. Stopping.", file=sys.stderr, flush=True)
                return 1
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if deployment is not None:
            deployment.stop()
        if ours:
            stack.stop_stack(base)
        print("stopped", flush=True)
