"""docker-compose.yaml, checked statically (no Docker engine runs here): the Compose Specification's
own schema, the services and their healthchecks, and the connections and variables it sets against
the ones the code reads, both ways."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yaml"
LONG_RUNNING = {
    "postgres",
    "minio",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "redis",  # profile celery
    "airflow-worker",  # profile celery
}
ONE_SHOT = {"minio-init", "airflow-init"}
#: development tooling (the devstack package: local stack, demo; and the CLI), not what a deployment runs
DEV_TOOLING = {"devstack", "cli.py"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_validates_against_the_compose_specification() -> None:
    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or "check-jsonschema"
    result = subprocess.run(
        [tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_services_healthchecks_images_and_volumes() -> None:
    spec = compose()
    services = spec["services"]
    assert set(services) == LONG_RUNNING | ONE_SHOT
    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in ONE_SHOT:
        assert services[name]["restart"] == "no"
    assert re.fullmatch(r"minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", services["minio"]["image"])
    assert "--console-address" in services["minio"]["command"]
    assert set(spec["volumes"]) == {"postgres-data", "minio-data", "e2e3d-data"}
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        service = services[name]
        assert service["build"] == "." and "e2e3d-data:/app/data" in service["volumes"]
        assert service["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert "pip install" in (ROOT / "Dockerfile").read_text()  # the provider, installed from this repository


def test_the_celery_profile_runs_scalable_workers_as_airflows_official_compose_does() -> None:
    services = compose()["services"]
    assert services["redis"]["profiles"] == services["airflow-worker"]["profiles"] == ["celery"]
    assert not any(s.get("profiles") for n, s in services.items() if n not in ("redis", "airflow-worker"))
    worker = services["airflow-worker"]
    assert worker["command"] == "celery worker" and worker["build"] == "."
    assert "ports" not in worker and "container_name" not in worker  # so --scale can start several
    assert "e2e3d-data:/app/data" in worker["volumes"] and worker["environment"]["DUMB_INIT_SETSID"] == "0"
    assert "inspect ping" in worker["healthcheck"]["test"][1]
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    env = worker["environment"]
    assert (
        env["AIRFLOW__CORE__EXECUTOR"]
        == "${AIRFLOW_EXECUTOR:-LocalExecutor}"
        == airflow_env()["AIRFLOW__CORE__EXECUTOR"]
    )
    assert (
        env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        and "@redis:6379" in env["AIRFLOW__CELERY__BROKER_URL"]
    )
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
    settings = {k: v for k, v in env.items() if k != "DUMB_INIT_SETSID" and not k.startswith("AIRFLOW_CONN_")}
    assert settings == airflow_env()  # the same Airflow as the rest (its connections: the tasks' share)
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def airflow_env() -> dict[str, str]:
    """The environment every Airflow service shares (its connections come per service, see below)."""
    return compose()["services"]["airflow-dag-processor"]["environment"]


def code_conn_ids() -> set[str]:
    """Connection ids the hooks default to and the DAGs name."""
    from e2e3d_provider.hooks import DEFAULT_BACKUP_CONN_ID, ROLE_CONN_IDS

    ids = {
        StorageHook.default_conn_name,
        MetadataHook.default_conn_name,
        DEFAULT_BACKUP_CONN_ID,
        *ROLE_CONN_IDS.values(),
    }
    for dag_file in (ROOT / "dags").glob("*.py"):
        ids |= set(re.findall(r'_CONN_ID = "([a-z0-9_]+)"', dag_file.read_text()))
    return ids


def code_env_vars() -> set[str]:
    """E2E3D_* variables the deployed code reads (not the dev tooling's, not the tests')."""
    names: set[str] = set()
    for path in (ROOT / "e2e3d_provider").rglob("*.py"):
        # core/settings.py declares every variable (the dev tooling's too) for the docs and e2e3d config; it reads none
        if not DEV_TOOLING & {path.name, *path.parts} and path != ROOT / "e2e3d_provider" / "core" / "settings.py":
            names |= set(re.findall(r'"(E2E3D_[A-Z_]+)"', path.read_text()))
    return {n for n in names if not n.startswith("E2E3D_TEST_")}


#: compose service -> the Airflow component it runs (hooks.COMPONENT_CONN_IDS says what each is given)
SERVICE_COMPONENTS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-worker": "celery-worker",
    "airflow-triggerer": "triggerer",
    "airflow-dag-processor": "dag-processor",
}


def conn_ids_of(service: str) -> set[str]:
    env = compose()["services"][service].get("environment", {})
    return {name.removeprefix("AIRFLOW_CONN_").lower() for name in env if name.startswith("AIRFLOW_CONN_")}


def test_each_service_gets_only_the_connections_its_component_is_given() -> None:
    """Every connection was handed to every service, so any task could read the MinIO root keys and the
    backup target's. Each Airflow service now holds its component's share (COMPONENT_CONN_IDS), the admin's
    keys are only in the two init services, and together they set every connection the code reads."""
    from e2e3d_provider.hooks import COMPONENT_CONN_IDS, DEFAULT_METADATA_CONN_ID, ROLE_CONN_IDS

    for service, component in SERVICE_COMPONENTS.items():
        assert conn_ids_of(service) == set(COMPONENT_CONN_IDS[component]), service
    assert conn_ids_of("airflow-init") == {ROLE_CONN_IDS["admin"], DEFAULT_METADATA_CONN_ID}  # bootstrap
    roles = {conn for role, conn in ROLE_CONN_IDS.items() if role != "admin"}
    assert conn_ids_of("minio-init") == {ROLE_CONN_IDS["admin"], *roles, "e2e3d_backup"}  # the users it makes
    admin_holders = {name for name in compose()["services"] if ROLE_CONN_IDS["admin"] in conn_ids_of(name)}
    assert admin_holders == {"minio-init", "airflow-init"}
    every = set().union(*(conn_ids_of(name) for name in compose()["services"]))
    assert every == code_conn_ids() - {StorageHook.default_conn_name}  # minio_default: the roles replace it
    api = compose()["services"]["airflow-apiserver"]["environment"]
    assert '"conn_type": "aws"' in api["AIRFLOW_CONN_MINIO_API"]
    assert api["AIRFLOW_CONN_E2E3D_METADATA"].startswith("postgresql://")


def test_compose_refuses_to_start_without_every_secret() -> None:
    """Compose defaulted to a known JWT secret and known passwords. Now every secret is required
    (``${VAR:?...}``), .env.example leaves each empty, and deploy/new_env.py fills them with fresh values."""
    import importlib.util

    text = COMPOSE.read_text()
    secret = re.compile(r"^[A-Z0-9_]*(PASSWORD|SECRET|SECRET_KEY|FERNET_KEY)$")
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))
    secrets_used = {name for name in used if secret.match(name)}
    assert len(secrets_used) >= 10, secrets_used
    for name in secrets_used:
        assert "${" + name + ":-" not in text, f"{name} has a default in docker-compose.yaml"
        assert "${" + name + ":?" in text, f"{name} is not required in docker-compose.yaml"
    example = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert all(example[name] == "" for name in secrets_used), "a secret in .env.example has a value"
    spec = importlib.util.spec_from_file_location("new_env", ROOT / "deploy" / "new_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    one, two = (dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", module.new_env((ROOT / ".env.example").read_text()), re.M))
                for _ in range(2))  # fmt: skip
    for name in secrets_used:
        assert one[name] and one[name] != two[name], name  # fresh each time
    assert len(one["AIRFLOW_JWT_SECRET"]) >= 64 and 8 <= len(one["MINIO_WORKER_PASSWORD"]) <= 40


def test_e2e3d_variables_set_are_exactly_those_the_code_reads() -> None:
    set_vars = {name for name in airflow_env() if name.startswith("E2E3D_")}
    assert set_vars == code_env_vars() == {"E2E3D_DATA_ROOT", "E2E3D_EVENT_LOOP"}


def test_env_example_documents_every_variable_the_compose_file_uses() -> None:
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)(?::[-?][^}]*)?\}", COMPOSE.read_text()))  # not $$-escaped
    documented = set(re.findall(r"^([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert used == documented


def test_minio_init_makes_the_roles_with_the_projects_own_bootstrap() -> None:
    """No mc: minio-init runs ``e2e3d bootstrap --roles`` from the provider's image, with the connections
    every component uses, so each role's MinIO user has exactly the keys its connection signs with."""
    from e2e3d_provider.core.roles import GRANTS

    services = compose()["services"]
    init = services["minio-init"]
    assert init["image"] == services["airflow-apiserver"]["image"] and init["build"] == "."
    assert "e2e3d bootstrap --roles --storage-only" in init["command"][-1]
    assert init["depends_on"] == {"minio": {"condition": "service_healthy"}}
    env = init["environment"]
    assert {k: v for k, v in env.items() if not k.startswith("AIRFLOW_CONN_")} == airflow_env()
    for role in GRANTS:
        conn = json.loads(env[f"AIRFLOW_CONN_MINIO_{role.upper()}"])
        assert conn["login"].startswith(f"${{MINIO_{role.upper()}_USER")
    backup = json.loads(env["AIRFLOW_CONN_E2E3D_BACKUP"])
    assert backup["login"].startswith("${E2E3D_BACKUP_USER:-e2e3d-backup")  # its own user, not the root's
    extra = json.loads(services["airflow-apiserver"]["environment"]["AIRFLOW_CONN_MINIO_API"])["extra"]
    assert extra["presign_endpoint_url"].startswith("${E2E3D_PUBLIC_S3_URL:-http://localhost:9000")  # for browsers
    assert "mc " not in json.dumps(init)


def test_the_compose_file_documents_tls_for_minio_and_postgresql() -> None:
    text = COMPOSE.read_text()
    assert "/root/.minio/certs" in text and "public.crt" in text and "private.key" in text  # MinIO's certs dir
    assert "ssl=on" in text and "ssl_cert_file" in text and "sslmode=verify-full" in text  # PostgreSQL SSL
