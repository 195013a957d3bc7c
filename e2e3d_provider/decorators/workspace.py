"""``@task.e2e3d_workspace``: a TaskFlow function that gets a :class:`Workspace` and writes results into it.

    @task.e2e3d_workspace
    def reconstruct(workspace: Workspace) -> dict:
        ...  # read workspace.input_dir, write below workspace.run_dir
        return {"faces": n}

    reconstruct(stage_in.output)

The first argument of the call is the stage-in XCom; the function receives the workspace in its place
(further arguments pass through). Everything else is :class:`WorkspaceOperator`'s: write-back while it
runs, the hand-off, the XCom ``handoff``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from airflow.sdk import Context
from airflow.sdk.bases.decorator import DecoratedOperator, TaskDecorator, task_decorator_factory

from e2e3d_provider.exceptions import InvalidInputError
from e2e3d_provider.lifecycle.worker.workspace import Workspace
from e2e3d_provider.operators.workspace import WorkspaceOperator


class WorkspaceDecoratedOperator(DecoratedOperator, WorkspaceOperator):
    """The operator behind ``@task.e2e3d_workspace``."""

    custom_operator_name = "@task.e2e3d_workspace"
    template_fields = (*DecoratedOperator.template_fields, "data_root")

    def staged_input(self) -> Mapping[str, Any]:
        args = list(self.op_args or ())
        if not args or not isinstance(args[0], Mapping):
            raise InvalidInputError(
                f"{self.task_id}: call the decorated function with the stage-in XCom first, e.g. "
                "reconstruct(stage_in.output)"
            )
        staged: Mapping[str, Any] = args[0]
        return staged

    def produce(self, workspace: Workspace, context: Context) -> Any:
        return self.python_callable(workspace, *list(self.op_args)[1:], **self.op_kwargs)


def workspace_task(python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> TaskDecorator:
    """Wrap a function into a :class:`WorkspaceOperator` task (``@task.e2e3d_workspace``)."""
    return task_decorator_factory(
        python_callable=python_callable, decorated_operator_class=WorkspaceDecoratedOperator, **kwargs
    )
