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
