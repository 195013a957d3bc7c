"""The hooks: the only place that opens connections and translates their errors.

The default connection ids live here, importable without Airflow (the CLI, the stack and the API
read them), and are the hooks' ``default_conn_name``.
"""

DEFAULT_MINIO_CONN_ID = "minio_default"
DEFAULT_METADATA_CONN_ID = "e2e3d_metadata"
#: the backup target: a second S3 endpoint, or a bucket beside the live ones (extra ``bucket``)
DEFAULT_BACKUP_CONN_ID = "e2e3d_backup"

#: the object-storage connection of each least-privilege role (``e2e3d_provider.core.roles``); a role
#: whose connection is not defined falls back to ``minio_default``, with a warning
ROLE_CONN_IDS = {
    "admin": "minio_admin",
    "ingest": "minio_ingest",
    "worker": "minio_worker",
    "api": "minio_api",
    "maintenance": "minio_maintenance",
}

#: the connections the tasks use: the workers' and maintenance roles, the backup target (the backup DAG,
#: scrub's repairs) and the metadata database; never the admin's keys
TASK_CONN_IDS = (
    ROLE_CONN_IDS["worker"],
    ROLE_CONN_IDS["maintenance"],
    DEFAULT_BACKUP_CONN_ID,
    DEFAULT_METADATA_CONN_ID,
)
#: each Airflow component -> the connections it is given, and no others: least privilege holds only if a
#: component's environment lacks the keys its role withholds (any task's code can read its environment).
#: The LocalExecutor runs tasks under the scheduler, so the scheduler gets the tasks' share; the admin keys
#: (``minio_admin``, ``minio_default``) go only where bootstrap runs (compose's init services, a shell).
COMPONENT_CONN_IDS: dict[str, tuple[str, ...]] = {
    "api-server": (ROLE_CONN_IDS["api"], DEFAULT_METADATA_CONN_ID),
    "scheduler": TASK_CONN_IDS,
    "celery-worker": TASK_CONN_IDS,
    "triggerer": (ROLE_CONN_IDS["worker"], DEFAULT_METADATA_CONN_ID),
    "dag-processor": (),
}
