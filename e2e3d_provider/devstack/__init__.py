"""Developer-machine tooling: the embedded stack (S3 server + PostgreSQL), the demo, sample data, local Airflow."""
