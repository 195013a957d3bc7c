#!/usr/bin/env bash
# Minimal stand-in for the official apache/airflow image's /entrypoint:
# "bash", "python" or an absolute path are exec'd as given; "airflow ..." and anything else run as `airflow ...`.
set -euo pipefail
case "${1-}" in
  bash|sh|python|python3|/*) exec "$@" ;;
  airflow) shift ;;
esac
exec airflow "$@"
