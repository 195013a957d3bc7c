#!/usr/bin/env bash
# Creates the E2E3D metadata database and its owner beside Airflow's own database.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE USER e2e3d WITH PASSWORD '${E2E3D_DB_PASSWORD}';
CREATE DATABASE e2e3d OWNER e2e3d;
SQL
