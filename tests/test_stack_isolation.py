"""The embedded stack as another local user sees it: nothing to read, write or connect to without
the stack's own keys, certificate or password; and the folders above the stack left as they were.

CI runs as root, which passes every file-permission check; the "other user" probes run as
``nobody`` (``setpriv``), with the interpreter itself (not the venv) so nothing else needs to be
readable to them.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg2
import pytest

from e2e3d_provider.devstack import stack

NOBODY = 65534


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def listening_tcp_ports(pid: int) -> set[int]:
    """The TCP ports a process listens on (from /proc, so no `ss` is needed)."""
    inodes = _socket_inodes(pid)
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def listening_unix_sockets(pid: int) -> set[str]:
    inodes = _socket_inodes(pid)
    paths = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[6] in inodes and fields[7].startswith("/"):
            paths.add(fields[7])
    return paths


def as_nobody(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to run a probe as another user"
    python = os.path.realpath(sys.executable)
    return subprocess.run(
        [
            setpriv,
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "--inh-caps=-all",
            python,
            "-I",
            "-S",
            "-c",
            code,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


def _plain_http_reply(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/buckets/output/", headers={"Accept": "application/json"})
        reply = conn.getresponse()
        return f"{reply.status} {reply.read(200)!r}"
    except (OSError, http.client.HTTPException) as err:
        return f"refused: {err!r}"
    finally:
        conn.close()


def _tls_without_client_certificate(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
            tls.sendall(b"GET /buckets/output/ HTTP/1.1\r\nHost: x\r\n\r\n")
            data = tls.recv(200)
            return f"answered {data!r}" if data else "refused: closed"
    except (OSError, ssl.SSLError) as err:
        return f"refused: {err!r}"


@pytest.fixture()
def local_stack(stack_info: stack.StackInfo | None) -> stack.StackInfo:
    if stack_info is None:
        pytest.fail("these checks are about the embedded stack; unset E2E3D_TEST_S3_ENDPOINT/E2E3D_TEST_PG_DSN")
    return stack_info


@pytest.mark.servers("seaweedfs")
def test_every_seaweedfs_port_but_s3_refuses_a_client_without_the_stack_certificate(
    local_stack: stack.StackInfo,
) -> None:
    ports = listening_tcp_ports(local_stack.s3_pid) - {local_stack.s3_port}
    assert len(ports) >= 6, ports  # master, volume, filer and their gRPC twins at least
    answered = {}
    for port in sorted(ports):
        plain = _plain_http_reply(port)
        tls = _tls_without_client_certificate(port)
        # a TLS server answers plain HTTP with Go's fixed 400 "client sent an HTTP request to an HTTPS server"
        if not (plain.startswith("refused") or "HTTPS server" in plain) or not tls.startswith("refused"):
            answered[port] = (plain, tls)
    assert not answered, f"ports that serve a client without the stack's certificate: {answered}"


def test_the_s3_gateway_refuses_unsigned_requests(local_stack: stack.StackInfo) -> None:
    status = _plain_http_reply(local_stack.s3_port)
    assert status.startswith("403"), status


def test_other_users_cannot_connect_to_any_stack_socket(local_stack: stack.StackInfo) -> None:
    sockets = listening_unix_sockets(local_stack.s3_pid) | listening_unix_sockets(local_stack.pg_pid)
    assert any(".s.PGSQL." in path for path in sockets), sockets
    probe = (
        "import socket, sys\n"
        "for path in sys.argv[1:]:\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        "    try:\n"
        "        s.connect(path)\n"
        "        print('CONNECTED', path)\n"
        "    except OSError as err:\n"
        "        print('refused', path, err.errno)\n"
    )
    result = as_nobody(probe, *sorted(sockets))
    assert result.returncode == 0, result.stderr
    assert "CONNECTED" not in result.stdout, result.stdout


def test_postgres_wants_the_password_on_its_socket_and_on_tcp(local_stack: stack.StackInfo) -> None:
    socket_dir = Path(local_stack.base_dir) / "pgsock"
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
    for host in (str(socket_dir), "127.0.0.1"):
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(host=host, port=local_stack.pg_port, user="postgres", dbname="postgres").close()
    psycopg2.connect(local_stack.pg_dsn).close()


def test_starting_the_stack_leaves_the_folders_above_it_as_they_were(local_stack: stack.StackInfo) -> None:
    """pytest makes its temporary folders 0700; the stack in them must not have widened any of them."""
    base = Path(local_stack.base_dir)
    assert stat.S_IMODE(base.stat().st_mode) == 0o700
    assert stat.S_IMODE(base.parent.stat().st_mode) == 0o700, "the stack widened a parent folder"
    own = {"seaweedfs": base / "tls", "minio": base / "minio"}[local_stack.server]  # SeaweedFS: its CA always
    for path in (base / "pgdata", base / "pgsock", own):
        st = path.stat()
        assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700, path


def test_a_stack_dir_made_beforehand_with_a_wide_mode_is_made_private(s3_server: str) -> None:
    """``mkdir -m 755 d && e2e3d stack up --dir d`` once left d 0755, and the servers' data files (0644)
    open to every local user: nobody read an object's bytes out of SeaweedFS's volume files."""
    from tests.helpers import own_stack_server

    # only the stack directory's own mode can protect it
    parent = Path(tempfile.mkdtemp(prefix="e2e3d-wide-"))
    parent.chmod(0o755)
    base = parent / "stack"
    base.mkdir(mode=0o755)
    base.chmod(0o755)
    info = stack.start_stack(base, owner_pid=os.getpid(), server=own_stack_server(s3_server))
    try:
        from e2e3d_provider.hooks.storage import StorageHook

        secret = b"the bytes of an object nobody may read " * 100
        conn = info.minio_conn()
        os.environ["AIRFLOW_CONN_WIDE_STACK"] = json.dumps(conn)
        hook = StorageHook("wide_stack")
        hook.client.make_bucket("input")
        hook.put_bytes("input", "private.bin", secret)
        assert stat.S_IMODE(base.stat().st_mode) == 0o700
        probe = (
            "import os, sys\n"
            "found = []\n"
            "for root, dirs, files in os.walk(sys.argv[1]):\n"
            "    for name in files:\n"
            "        try:\n"
            "            with open(os.path.join(root, name), 'rb') as f:\n"
            "                found.append(name) if b'nobody may read' in f.read() else None\n"
            "        except OSError:\n"
            "            pass\n"
            "print('LISTED', len(list(os.scandir(sys.argv[1]))) if os.access(sys.argv[1], os.R_OK | os.X_OK) else 0)\n"
            "print('FOUND', found)\n"
        )
        result = as_nobody(probe, str(base))
        assert result.returncode == 0, result.stderr
        assert "LISTED 0" in result.stdout and "FOUND []" in result.stdout, result.stdout
    finally:
        os.environ.pop("AIRFLOW_CONN_WIDE_STACK", None)
        stack.stop_stack(base)
        shutil.rmtree(parent, ignore_errors=True)


def test_a_folder_of_other_files_is_refused_as_a_stack_dir_not_narrowed(tmp_path: Path) -> None:
    folder = tmp_path / "documents"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(stack.StackError, match="holds files but no stack"):
        stack.start_stack(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755 and (folder / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("action", ["up", "down", "status", "env"])
def test_every_stack_command_refuses_a_symlinked_dir_instead_of_following_it(tmp_path: Path, action: str) -> None:
    """``stack up --dir <link>`` resolved the link before checking it (``stack env`` refused the same link),
    so the link's target was used and left as it was."""
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    link = tmp_path / "link"
    link.symlink_to(target)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "e2e3d"), "stack", action, "--dir", str(link)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "symbolic link" in result.stderr, (result.stdout, result.stderr)
    assert list(target.iterdir()) == [] and stat.S_IMODE(target.stat().st_mode) == 0o755


def test_seaweedfs_never_gets_a_port_it_reserves_for_the_admin_grpc(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI once failed to start SeaweedFS: "port 53355 for Volume ... is reserved for gRPC calculation". mini
    reserves admin port + 10000 for the admin's gRPC and refuses a given port equal to it; the admin port
    was picked free and with +10000 free, but +10000 was one of the eight ports just picked (closed again,
    so free). The free-port draws are faked to repeat that collision."""
    draws = iter([[40001, 40002, 40003, 40004, 40005, 40006, 40007, 53355], [43355, 43356]])
    monkeypatch.setattr(stack, "free_ports", lambda count: next(draws))
    monkeypatch.setattr(stack, "port_pair_free", lambda port: True)
    ports, admin = stack.seaweed_ports()
    assert admin == 43356 and admin + 10000 not in ports and admin not in ports
