"""Session fixtures: a real S3 server and a real PostgreSQL for the whole test run.

By default the embedded stack (SeaweedFS + embedded PostgreSQL) starts on free loopback
ports in a temporary directory, watched by a watchdog that stops it if pytest dies. Set
``E2E3D_TEST_S3_ENDPOINT`` (+ ``E2E3D_TEST_S3_ACCESS_KEY`` / ``E2E3D_TEST_S3_SECRET_KEY``) and
``E2E3D_TEST_PG_DSN`` to run against external servers instead (e.g. docker-compose's MinIO).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Iterator
from importlib.metadata import distributions
from pathlib import Path
from urllib.parse import urlsplit

# Airflow reads its configuration at import: give the whole session its own home and no examples,
# removed when the session's process exits (nothing of a test run is left in /tmp but pytest's own basetemp).
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="e2e3d-airflow-home-")
atexit.register(shutil.rmtree, _AIRFLOW_HOME, True)
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
REPO = Path(__file__).resolve().parents[1]


def _package_under_test() -> tuple[Path, bool]:
    """Where ``e2e3d_provider`` is imported from, and whether the install is an editable checkout.

    The suite tests the package as users receive it: an installed wheel. An editable install (the fast
    loop of a developer) is allowed and said so in the header; the checkout shadowing an installed
    wheel (``python -m pytest`` puts the current folder first on sys.path) is refused, since the
    suite would then pass on files the wheel may not carry.
    """
    import e2e3d_provider

    origin = Path(e2e3d_provider.__file__).resolve().parent
    purelib = Path(sysconfig.get_paths()["purelib"]).resolve()
    if origin.is_relative_to(purelib):
        return origin, False
    installed = [d for d in distributions(path=[str(purelib)]) if d.metadata["Name"] == "e2e3d-provider"]
    direct_url = json.loads((installed[0].read_text("direct_url.json") if installed else None) or "{}")
    editable = bool(direct_url.get("dir_info", {}).get("editable"))
    if not editable:
        raise RuntimeError(
            f"the tests import e2e3d_provider from {origin}, not from the installed wheel in {purelib}: "
            "run .venv/bin/pytest (python -m pytest puts the current folder first on sys.path)"
        )
    return origin, editable


PACKAGE_DIR, EDITABLE = _package_under_test()
from e2e3d_provider.example_dags import DAGS_DIR  # noqa: E402  (the example DAGs of the package under test)

os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS_DIR)
# dag.test() runs only DAGs found in a bundle: the product DAGs and the tests' own small DAGs.
os.environ["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps(
    [
        {
            "name": name,
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(path)},
        }
        for name, path in (("e2e3d-dags", DAGS_DIR), ("e2e3d-test-dags", REPO / "tests" / "dags"))
    ]
)
os.environ.setdefault("XDG_RUNTIME_DIR", _AIRFLOW_HOME)
os.environ["AIRFLOW__API_AUTH__JWT_SECRET"] = "e2e3d-tests-" + "s" * 64  # >= 64 bytes, as HS512 wants
os.environ.pop("E2E3D_DATA_ROOT", None)

import pytest  # noqa: E402


def pytest_report_header() -> str:
    kind = "editable checkout" if EDITABLE else "installed wheel"
    return f"e2e3d-provider under test: {kind} at {PACKAGE_DIR}"


from e2e3d_provider.devstack import stack  # noqa: E402
from tests.helpers import ensure_chromium, ensure_gltf_validator, serve, validate_gltf  # noqa: E402


def _pg_conn_from_dsn(dsn: str) -> dict:
    parts = urlsplit(dsn)
    return {
        "conn_type": "postgres",
        "host": parts.hostname,
        "port": parts.port or 5432,
        "login": parts.username,
        "password": parts.password,
        "schema": parts.path.lstrip("/") or "postgres",
    }


def external_servers() -> bool:
    """True when the tests run against servers named by ``E2E3D_TEST_S3_*`` / ``E2E3D_TEST_PG_DSN``."""
    return bool(os.environ.get("E2E3D_TEST_S3_ENDPOINT") and os.environ.get("E2E3D_TEST_PG_DSN"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--s3-servers",
        default=os.environ.get("E2E3D_TEST_S3_SERVERS", ",".join(stack.SERVERS)),
        help="the S3 servers of the embedded stack whose lanes run, comma-separated (default: "
        "seaweedfs,minio; $E2E3D_TEST_S3_SERVERS)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that uses the storage runs once per S3 server lane (``[seaweedfs]``, ``[minio]``); a
    test marked ``one_server`` (a whole Airflow deployment) runs in the first lane only, one marked
    ``servers(...)`` only in the lanes it names (it is not collected in the others: nothing is skipped)."""
    if "s3_server" not in metafunc.fixturenames:
        return
    if external_servers():
        lanes = ["external"]
    else:
        lanes = [name.strip() for name in metafunc.config.getoption("--s3-servers").split(",") if name.strip()]
        unknown = set(lanes) - set(stack.SERVERS)
        if unknown or not lanes:
            raise pytest.UsageError(f"--s3-servers: choose among {', '.join(stack.SERVERS)}; got {lanes}")
        if metafunc.definition.get_closest_marker("one_server"):
            lanes = lanes[:1]
        only = metafunc.definition.get_closest_marker("servers")
        if only:  # a check of one server's own machinery (SeaweedFS's volumes and internal ports)
            lanes = [lane for lane in lanes if lane in only.args]
    metafunc.parametrize("s3_server", lanes, indirect=True, scope="session")


#: fixtures that start a server or an Airflow database: a test that uses one (directly or through another
#: fixture) is in the integration tier
SERVER_FIXTURES = frozenset({"s3_server", "airflow_db", "browser", "minio_binary"})


@pytest.hookimpl(tryfirst=True)  # the tiers are marked before -m selects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Two tiers: a test that needs a server (one of SERVER_FIXTURES in its fixture closure) or says so
    (``pytest.mark.integration``: it starts servers or processes of its own) is ``integration``; the rest
    form the fast tier, ``pytest -m "not integration"``.

    Tests marked ``compose`` (docker-compose.yaml brought up with podman: root, many minutes) run only when
    asked for: ``-m`` names the marker (``-m compose``), or ``E2E3D_TEST_COMPOSE=1``. Otherwise they are
    deselected, as ``-m "not compose"`` would (left to a ``-m`` of the user's own when it mentions them)."""
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    if "compose" in (config.getoption("markexpr") or "") or os.environ.get("E2E3D_TEST_COMPOSE") == "1":
        return
    deselected = [item for item in items if item.get_closest_marker("compose")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("compose")]


@pytest.fixture(scope="session")
def minio_binary() -> str:
    """The MinIO server binary: ``$E2E3D_MINIO_BINARY`` or ``minio`` on PATH, else the pinned test build,
    fetched (tests/minio_binary.py). Where it cannot be had, the test fails saying why: never a skip."""
    found = os.environ.get("E2E3D_MINIO_BINARY") or shutil.which("minio")
    if found:
        return found
    from tests.minio_binary import MinioUnavailable, ensure_minio

    try:
        path = str(ensure_minio())
    except MinioUnavailable as err:
        pytest.fail(f"the MinIO lane cannot run: {err}", pytrace=False)
    os.environ["E2E3D_MINIO_BINARY"] = path
    return path


@pytest.fixture(scope="session")
def s3_server(request: pytest.FixtureRequest) -> str:
    """The S3 server of this lane (``seaweedfs``, ``minio``, or ``external``)."""
    if request.param == "minio":
        request.getfixturevalue("minio_binary")
    return request.param


@pytest.fixture(scope="session")
def stack_info(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.StackInfo | None]:
    """The embedded stack of this lane (None when external servers are configured)."""
    if s3_server == "external":
        yield None
        return
    base = tmp_path_factory.mktemp(f"stack-{s3_server}")
    info = stack.start_stack(base, owner_pid=os.getpid(), server=s3_server)
    try:
        yield info
    finally:
        stack.stop_stack(base)


@pytest.fixture(scope="session")
def connections(stack_info: stack.StackInfo | None) -> dict[str, dict]:
    """Airflow connections (``minio_default``, ``e2e3d_metadata``) for the session's servers,
    exported as ``AIRFLOW_CONN_*`` variables."""
    if stack_info is not None:
        minio, metadata = stack_info.minio_conn(), stack_info.metadata_conn()
    else:
        minio = {
            "conn_type": "aws",
            "login": os.environ.get("E2E3D_TEST_S3_ACCESS_KEY", "minioadmin"),
            "password": os.environ.get("E2E3D_TEST_S3_SECRET_KEY", "minioadmin"),
            "extra": {"endpoint_url": os.environ["E2E3D_TEST_S3_ENDPOINT"], "region_name": "us-east-1"},
        }
        metadata = _pg_conn_from_dsn(os.environ["E2E3D_TEST_PG_DSN"])
    os.environ["AIRFLOW_CONN_MINIO_DEFAULT"] = json.dumps(minio)
    os.environ["AIRFLOW_CONN_E2E3D_METADATA"] = json.dumps(metadata)
    roles = {}
    if stack_info is not None:  # every component on its least-privilege role, as `e2e3d stack env` sets up
        from e2e3d_provider.hooks import ROLE_CONN_IDS

        for role, conn_id in ROLE_CONN_IDS.items():
            roles[conn_id] = stack_info.role_conn(role)
            os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(roles[conn_id])
    return {"minio_default": minio, "e2e3d_metadata": metadata, **roles}


@pytest.fixture(scope="session")
def storage(connections: dict[str, dict]):
    from e2e3d_provider.hooks.storage import StorageHook

    hook = StorageHook()
    hook.bootstrap()
    return hook


@pytest.fixture(scope="session")
def metadata(connections: dict[str, dict]):
    from e2e3d_provider.hooks.metadata import MetadataHook

    hook = MetadataHook()
    hook.migrate()
    return hook


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Airflow's own metadata DB (SQLite in the session's AIRFLOW_HOME), for dag.test()."""
    airflow = Path(sys.executable).parent / "airflow"
    result = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="session")
def airflow_deployment(stack_info, connections, storage, metadata, tmp_path_factory: pytest.TempPathFactory):
    """A real Airflow deployment (api-server, scheduler, dag-processor, triggerer; LocalExecutor; its own
    database in the session's PostgreSQL) with dags/ and tests/dags/, started once for the session."""
    if stack_info is None:
        pytest.skip("the Airflow deployment runs on the embedded stack (its PostgreSQL holds Airflow's database)")
    from e2e3d_provider.devstack.airflow_deployment import AirflowDeployment

    base = tmp_path_factory.mktemp("airflow-deployment")
    deployment = AirflowDeployment(
        stack_info,
        base / "home",
        [DAGS_DIR, REPO / "tests" / "dags"],
        base / "data",
        owner_pid=os.getpid(),
    )
    deployment.start()
    try:
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture(scope="session")
def gltf_validator():
    """The Khronos glTF validator as a function: paths -> {path: report} (npm ci on first use)."""
    script = ensure_gltf_validator()
    return lambda paths: validate_gltf(script, list(paths))


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium driven by Selenium (WebDriver), for tests of what a person sees in the UI."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = ensure_chromium()
    options = Options()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def webgl_browser():
    """A headless Chromium with software WebGL (SwiftShader through ANGLE), for pages that draw 3D; it records the
    DevTools network events (bytes on the wire per request) and the console in its performance and browser logs.
    Separate from ``browser``: the flags that enable SwiftShader are not what the other UI tests should run on."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = ensure_chromium()
    options = Options()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,800",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",  # software WebGL is opt-in since Chromium 137
        "--ignore-gpu-blocklist",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def run_dag(airflow_db, connections):
    """Run a DAG of tests/dags with dag.test(run_conf=...); return the DagRun."""

    def run(dag, conf: dict):
        return dag.test(run_conf=conf)

    return run


@pytest.fixture
def bucket(storage) -> str:
    """A fresh, empty bucket of this test's own."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    storage.client.make_bucket(name)
    return name


@pytest.fixture
def unique_id() -> str:
    return f"job-{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True)
def documented_statuses() -> Iterator[None]:
    """Fails a test during which an API served by ``tests.helpers.serve`` answered a status that the
    answering operation's OpenAPI does not document (the guard records it; this reports it)."""
    from tests.helpers import take_undocumented

    take_undocumented()  # what an earlier test's server answered after that test ended is not this test's
    yield
    found = take_undocumented()
    if found:
        pytest.fail(f"the API answered statuses its OpenAPI does not document: {found}", pytrace=False)


@pytest.fixture(scope="module")
def api(airflow_db, connections) -> Iterator[str]:
    """The results API (with the dashboard) served on loopback for a test module; users admin, viewer, runner."""
    from e2e3d_provider.api.app import create_app

    os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = "admin:admin,viewer:viewer,runner:user"
    url, server, thread = serve(create_app())
    yield url
    server.should_exit = True
    thread.join(10)
