# Airflow 3 with e2e3d-provider installed from this repository (used by docker-compose.yaml).
# The [demo] extra brings numpy for the example DAG's demo reconstruction and the right-sizing libraries ([rightsize]);
# [backup] brings pg_dump / pg_restore 18 (the image's own client is older than the postgres:16 server).
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root . /opt/e2e3d-provider
RUN pip install --no-cache-dir "/opt/e2e3d-provider[demo,backup]"
