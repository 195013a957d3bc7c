"""The hooks: the only place that opens connections and translates their errors.

The default connection ids live here, importable without Airflow (the CLI, the stack and the API
read them), and are the hooks' ``default_conn_name``.
"""

DEFAULT_MINIO_CONN_ID = "minio_default"
DEFAULT_METADATA_CONN_ID = "e2e3d_metadata"
