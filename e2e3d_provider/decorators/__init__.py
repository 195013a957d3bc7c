"""TaskFlow decorators of the provider (``@task.e2e3d_workspace``)."""
