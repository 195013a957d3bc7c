"""``e2e3d airflow``'s supervisor: a component that exits is started again, within a bounded restart rate.

Every second :meth:`Supervisor.check` looks at the stack's two servers and the Airflow components. A
server that died is started again on its recorded ports (:func:`~e2e3d_provider.devstack.stack.restart_dead`),
a component that exited with the same command line, environment and ports
(:meth:`~e2e3d_provider.devstack.airflow_deployment.AirflowDeployment.restart`): a SIGTERM or SIGKILL to
one of them (or a crash) costs a few seconds, not the deployment. Each one may be restarted at most
``max_restarts`` times within ``window`` seconds (:class:`RestartBudget`); one that keeps dying is a
:class:`GaveUp` naming it and its log, and the caller stops everything.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from e2e3d_provider.devstack import stack
from e2e3d_provider.devstack.airflow_deployment import AirflowDeployment
from e2e3d_provider.exceptions import StackError

#: restarts allowed per component within RESTART_WINDOW seconds
MAX_RESTARTS = 5
RESTART_WINDOW = 300.0


class GaveUp(StackError):
    """A component exited more often than its restart budget allows; the deployment is to be stopped."""


class RestartBudget:
    """At most ``max_restarts`` restarts of each named component within any ``window`` seconds."""

    def __init__(
        self,
        max_restarts: int = MAX_RESTARTS,
        window: float = RESTART_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_restarts < 1 or window <= 0:
            raise ValueError(f"a restart budget needs max_restarts >= 1 and window > 0, not {max_restarts}, {window}")
        self.max_restarts = max_restarts
        self.window = window
        self.clock = clock
        self._restarts: dict[str, deque[float]] = {}

    def spend(self, name: str) -> int:
        """Count one restart of ``name``; how many it had within the window, this one included. Raises
        :class:`GaveUp` instead when that would be more than ``max_restarts``."""
        now = self.clock()
        times = self._restarts.setdefault(name, deque())
        while times and now - times[0] >= self.window:
            times.popleft()
        if len(times) >= self.max_restarts:
            raise GaveUp(
                f"{name} exited {len(times) + 1} times within {self.window:.0f} s "
                f"(at most {self.max_restarts} restarts allowed): giving up"
            )
        times.append(now)
        return len(times)


class Supervisor:
    """Keeps the stack in ``base`` and an Airflow deployment on it running (see the module's docstring)."""

    def __init__(
        self, deployment: AirflowDeployment, base: Path, budget: RestartBudget | None = None, say: Callable = print
    ) -> None:
        self.deployment = deployment
        self.base = Path(base)
        self.budget = budget or RestartBudget()
        self.say = say

    def check(self) -> list[str]:
        """Restart what died since the last check, the stack's servers first (the components need them);
        what was restarted. Raises :class:`GaveUp` past the budget, :class:`StackError` when the stack was
        stopped on purpose (``e2e3d stack down``: nothing to restart, Airflow cannot run without it)."""
        restarted: list[str] = []
        info = stack.read_state(self.base)
        if info is None:
            raise StackError(f"the stack in {self.base} was stopped (its {stack.STATE_FILE} is gone)")
        if not stack.is_running(info):
            dead = [
                name
                for name, pid in ((info.server_name, info.s3_pid), ("PostgreSQL", info.pg_pid))
                if not stack.pid_alive(pid)
            ]
            counts = {name: self._spend(name, f"the stack's {name}", self.base / _server_log(name)) for name in dead}
            info, names = stack.restart_dead(self.base)
            for name in names:
                self.say(f"e2e3d: the stack's {name} had exited; started again on its port ({self._of(counts[name])})")
            restarted += names
        for component, code in self.deployment.failed_components().items():
            count = self._spend(component, f"airflow {component}", self.deployment.log_path(component))
            self.deployment.restart(component)
            self.say(f"e2e3d: airflow {component} exited with code {code}; started again ({self._of(count)})")
            restarted.append(component)
        return restarted

    def _spend(self, name: str, what: str, log: Path) -> int:
        try:
            return self.budget.spend(name)
        except GaveUp as err:
            raise GaveUp(f"{what} keeps exiting: {err}; see {log}") from None

    def _of(self, count: int) -> str:
        return f"restart {count} of at most {self.budget.max_restarts} within {self.budget.window:.0f} s"


def _server_log(name: str) -> str:
    return {"SeaweedFS": "weed.log", "MinIO": "minio.log"}.get(name, "postgres.log")
