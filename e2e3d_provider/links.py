"""The "View" extra link of the lifecycle's tasks: the 3D viewer of the job their DAG run works on.

The link names the DAG run, not the job: a task knows its run at once, while the job id is an XCom of
``prepare`` (and the same job may be re-run by a later DAG run). The viewer asks the results API which job
the run owns (``/e2e3d/api/jobs/by-run``). Airflow computes the link when the task finishes and keeps it as an
XCom (``_link_ViewerLink``), so the UI shows it without importing this module in the api-server.
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


def viewer_url(dag_id: str, run_id: str) -> str:
    """The viewer's URL for a DAG run, its ids quoted (a run id holds ``:`` and ``+``)."""
    return f"{VIEWER_PATH}?{urlencode({'dag_id': dag_id, 'run_id': run_id}, quote_via=quote)}"


class ViewerLink(BaseOperatorLink):
    """Opens the E2E3D 3D viewer on the job of the task's DAG run (its mesh tiles and point cloud)."""

    name = "View"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return viewer_url(ti_key.dag_id, ti_key.run_id)
