"""The storage core: naming contract, manifests, transfers, roles, listings; no Airflow imports."""
