# Airflow 3 with e2e3d-provider installed from this repository (used by docker-compose.yaml).
# The [demo] extra brings numpy for the example DAG's demo reconstruction and the right-sizing libraries ([rightsize]);
# [backup] brings pg_dump / pg_restore 18 (the image's own client is older than the postgres:16 server).
FROM apache/airflow:3.3.2-python3.11
# The data root (E2E3D_DATA_ROOT) docker-compose.yaml mounts the e2e3d-data volume on, owned by the user the tasks
# run as: a new named volume takes the owner of the image's directory; with none there, Docker makes it root's and
# every task fails to create its run directory.
USER root
RUN mkdir -p /app/data && chown airflow:root /app/data && chmod 0775 /app/data
USER airflow
COPY --chown=airflow:root . /opt/e2e3d-provider
RUN pip install --no-cache-dir "/opt/e2e3d-provider[demo,backup]"
