"""MinIO as the embedded stack's S3 server (``e2e3d stack up --server minio``).

The binary is the user's own: ``$E2E3D_MINIO_BINARY``, else ``minio`` on PATH (this package ships
none). It listens on 127.0.0.1 only, with the stack's root keys; its console is off. Its data folder
sits in the stack directory (0700), so no other local user reads a byte of it. With ``tls``, it serves
HTTPS with the stack CA's certificate for 127.0.0.1. The least-privilege roles are MinIO users with the
policies :func:`e2e3d_provider.core.roles.minio_policy` generates, applied through MinIO's admin API
(:meth:`StorageHook.apply_roles`), as ``e2e3d bootstrap --roles`` does on a real deployment.

MinIO inherits the environment, so its settings can be given there: ``MINIO_SCANNER_SPEED=fastest``
makes its scanner (whose figures the usage reconciliation reads through the admin data-usage API)
start a cycle every second instead of every minute, at the cost of a busy core; the tests set it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from e2e3d_provider.exceptions import StackError

MINIO_BINARY_ENV = "E2E3D_MINIO_BINARY"
READY_TIMEOUT = 60.0


def minio_binary() -> str:
    """The MinIO server executable: ``$E2E3D_MINIO_BINARY``, else ``minio`` on PATH."""
    configured = os.environ.get(MINIO_BINARY_ENV)
    if configured:
        path = Path(configured)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise StackError(f"${MINIO_BINARY_ENV} is {configured!r}, which is not an executable file")
        return str(path)
    found = shutil.which("minio")
    if not found:
        raise StackError(
            f"the MinIO server binary is missing: put `minio` on PATH or set ${MINIO_BINARY_ENV} to its path "
            "(MinIO's own release for your platform), or run the stack with --server seaweedfs"
        )
    return found


def minio_args(base: Path, port: int, console_port: int, tls: bool) -> list[str]:
    """The command line of the stack's MinIO: data and certificates in the stack directory, loopback only."""
    args = [
        minio_binary(),
        "server",
        str(base / "minio"),
        "--quiet",
        "--address",
        f"127.0.0.1:{port}",
        "--console-address",
        f"127.0.0.1:{console_port}",
    ]
    if tls:
        args += ["--certs-dir", str(base / "tls" / "minio")]
    return args


def write_certs_dir(base: Path, cert: Path, key: Path, ca: Path) -> None:
    """MinIO's certificate folder: ``public.crt`` and ``private.key`` (0600), the CA under ``CAs/``."""
    folder = base / "tls" / "minio"
    (folder / "CAs").mkdir(mode=0o700, parents=True, exist_ok=True)
    for source, name, mode in ((cert, "public.crt", 0o644), (key, "private.key", 0o600), (ca, "CAs/ca.crt", 0o644)):
        target = folder / name
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(source.read_bytes())
        os.replace(tmp, target)


def launch_minio(base: Path, args: list[str], port: int, access_key: str, secret_key: str) -> int:
    """Start MinIO with ``args`` and the root keys; return its PID once it serves requests."""
    (base / "minio").mkdir(mode=0o700, exist_ok=True)
    env = {
        **os.environ,
        "MINIO_ROOT_USER": access_key,
        "MINIO_ROOT_PASSWORD": secret_key,
        "MINIO_BROWSER": "off",
        "MINIO_UPDATE": "off",
    }
    log_path = base / "minio.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            args,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=base,
            start_new_session=True,
        )
    tls = "--certs-dir" in args
    try:
        _wait_ready(proc, port, log_path, base / "tls" / "ca.pem" if tls else None)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return proc.pid


def _wait_ready(proc: subprocess.Popen, port: int, log_path: Path, ca: Path | None) -> None:
    """Wait for ``/minio/health/cluster`` to answer 200: ``live`` and ``ready`` answer before the server
    takes requests, this one only once it does."""
    import ssl

    scheme = "https" if ca else "http"
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    deadline = time.monotonic() + READY_TIMEOUT
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-20:]
            raise StackError(f"MinIO exited during start-up (code {proc.returncode}):\n" + "\n".join(tail))
        try:
            with urllib.request.urlopen(
                f"{scheme}://127.0.0.1:{port}/minio/health/cluster", timeout=2, context=context
            ) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError) as err:
            last = err
        time.sleep(0.1)
    raise StackError(f"MinIO not ready within {READY_TIMEOUT:.0f}s: {last}")
