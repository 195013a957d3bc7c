"""The extra links of the lifecycle's tasks: "View" (the 3D viewer of the job their DAG run works on),
"Results" (that job's record in the results API: status, files and bytes published) and "Dashboard" (the
storage dashboard).

The links name the DAG run, not the job: a task knows its run at once, while the job id is an XCom of
``prepare`` (and the same job may be re-run by a later DAG run). The viewer and the results API find the job
the run owns (``/e2e3d/api/v1/jobs?dag_id=&run_id=``). Airflow computes a link when the task finishes and keeps it
as an XCom (``_link_ViewerLink`` ...), so the UI shows it without importing this module in the api-server.
Every path is under ``/e2e3d``, the plugin app's mount on the api-server (the UI's own origin, whose login
cookie authenticates the page and the API).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

#: the viewer page of the plugin's app (mounted under /e2e3d on the api-server: the UI's own origin)
VIEWER_PATH = "/e2e3d/viewer"
#: the results API's job listing, which the DAG run's filters narrow to the job the run owns
RESULTS_PATH = "/e2e3d/api/v1/jobs"
#: the storage dashboard page
DASHBOARD_PATH = "/e2e3d/dashboard"


def _run_query(dag_id: str, run_id: str, **more: str) -> str:
    """A query naming a DAG run, its ids quoted (a run id holds ``:`` and ``+``)."""
    return urlencode({"dag_id": dag_id, "run_id": run_id, **more}, quote_via=quote)


def viewer_url(dag_id: str, run_id: str) -> str:
    """The viewer's URL for a DAG run."""
    return f"{VIEWER_PATH}?{_run_query(dag_id, run_id)}"


def results_url(dag_id: str, run_id: str) -> str:
    """The results API's answer for the job a DAG run owns (one job: its newest run)."""
    return f"{RESULTS_PATH}?{_run_query(dag_id, run_id, limit='1')}"


class ViewerLink(BaseOperatorLink):
    """Opens the E2E3D 3D viewer on the job of the task's DAG run (its mesh tiles and point cloud)."""

    name = "View"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return viewer_url(ti_key.dag_id, ti_key.run_id)


class ResultsLink(BaseOperatorLink):
    """Opens the results API's record of the job the task's DAG run owns (JSON): its id, status, the files and
    bytes it published and when it ran; the job's files are then at ``/e2e3d/api/v1/jobs/<job_id>/results``."""

    name = "Results"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return results_url(ti_key.dag_id, ti_key.run_id)


class DashboardLink(BaseOperatorLink):
    """Opens the storage dashboard: space per bucket and its fill projection, throughput, errors, jobs."""

    name = "Dashboard"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return DASHBOARD_PATH


#: what every lifecycle task carries (its ``operator_extra_links``)
LIFECYCLE_LINKS: tuple[BaseOperatorLink, ...] = (ViewerLink(), ResultsLink(), DashboardLink())
