"""Airflow listeners the provider's plugin registers (the DAG-run hooks that keep job tracking in step)."""
