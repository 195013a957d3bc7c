"""Compaction of the embedded stack's SeaweedFS volumes: a deleted object's bytes stay in its volume
file until the master has the volume vacuumed.

The master's HTTP port takes only clients with a certificate from the stack's own CA (mutual TLS,
:func:`~e2e3d_provider.devstack.stack.write_weed_security`), so the request shows that certificate.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3

from e2e3d_provider.devstack.stack import StackInfo, read_state
from e2e3d_provider.exceptions import StackError

#: seconds the master may take to have every volume compacted
VACUUM_TIMEOUT = 300.0
VOLUME_SUFFIXES = (".dat", ".idx")


def _weed_arg(info: StackInfo, name: str) -> str:
    """The value of ``-<name>=`` in the arguments the stack started SeaweedFS with."""
    for arg in info.s3_args:
        if arg.startswith(f"-{name}="):
            return arg.split("=", 1)[1]
    raise StackError(f"the stack in {info.base_dir} did not record SeaweedFS's -{name}")


def _master_client(base: Path) -> urllib3.PoolManager:
    """An HTTPS client that trusts only the stack CA and shows the stack's SeaweedFS client certificate."""
    tls = base / "tls"
    return urllib3.PoolManager(
        cert_reqs="CERT_REQUIRED",
        ca_certs=str(tls / "ca.pem"),
        cert_file=str(tls / "seaweedfs.pem"),
        key_file=str(tls / "seaweedfs-key.pem"),
        timeout=urllib3.Timeout(connect=5.0, read=VACUUM_TIMEOUT),
        retries=False,
    )


def volume_bytes(data_dir: Path) -> tuple[int, int]:
    """How many volumes the data directory holds and their files' bytes on disk (data and index)."""
    files = [p for p in data_dir.rglob("*") if p.suffix in VOLUME_SUFFIXES and p.is_file()]
    return sum(1 for p in files if p.suffix == ".dat"), sum(p.stat().st_size for p in files)


def embedded_vacuum(endpoint_url: str) -> Callable[[], dict[str, Any]] | None:
    """The volume vacuum of the embedded stack serving ``endpoint_url`` (``$E2E3D_STACK_DIR`` or the default
    stack dir), or None when the storage is not that stack (MinIO frees deleted objects' space itself)."""
    from e2e3d_provider.devstack.stack import default_stack_dir, is_running

    info = read_state(default_stack_dir())
    if info is None or not is_running(info) or info.s3_endpoint.rstrip("/") != endpoint_url.rstrip("/"):
        return None
    if info.server != "seaweedfs":  # MinIO frees deleted objects' space itself
        return None
    base = Path(info.base_dir)
    return lambda: vacuum_volumes(base)


def vacuum_volumes(base_dir: Path, garbage_threshold: float = 0.01) -> dict[str, Any]:
    """Have the stack's SeaweedFS master compact every volume whose deleted bytes exceed
    ``garbage_threshold`` of its size; the volumes' bytes on disk before and after."""
    if not 0.0 <= garbage_threshold < 1.0:
        raise ValueError(f"garbage_threshold is a share of a volume, 0 <= x < 1; got {garbage_threshold}")
    base = Path(base_dir).resolve()
    info = read_state(base)
    if info is None:
        raise StackError(f"no stack recorded in {base}")
    data_dir = Path(_weed_arg(info, "dir"))
    volumes, before = volume_bytes(data_dir)
    url = f"https://127.0.0.1:{_weed_arg(info, 'master.port')}/vol/vacuum?garbageThreshold={garbage_threshold}"
    try:
        response = _master_client(base).request("POST", url)
    except urllib3.exceptions.HTTPError as err:
        raise StackError(f"the SeaweedFS master at {url} did not answer: {err}") from err
    if response.status != 200:
        raise StackError(f"the SeaweedFS master refused the vacuum ({response.status}): {response.data[:300]!r}")
    json.loads(response.data)  # the topology it answers with: a master, not some other server on that port
    _, after = volume_bytes(data_dir)
    return {
        "garbage_threshold": garbage_threshold,
        "volumes": volumes,
        "bytes_before": before,
        "bytes_after": after,
        "reclaimed_bytes": before - after,
    }
