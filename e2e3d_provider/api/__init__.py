"""The results API the E2E3D plugin mounts on Airflow's api-server."""
