"""Compaction of the embedded stack's SeaweedFS volumes: a deleted object's bytes stay in its volume
file until the master has the volume vacuumed.

The master's HTTP port takes only clients with a certificate from the stack's own CA (mutual TLS,
:func:`~e2e3d_provider.devstack.stack.write_weed_security`), so the request shows that certificate.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3

from e2e3d_provider.devstack.stack import DEFAULT_STACK_DIR_ENV, StackInfo, default_stack_dir, is_running, read_state
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


def _data_files(data_dir: Path) -> dict[Path, int]:
    """Each volume's data file and its size: a volume the master compacted has a smaller one after."""
    return {p: p.stat().st_size for p in data_dir.rglob("*.dat") if p.is_file()}


def embedded_vacuum(endpoint_url: str) -> Callable[[], dict[str, Any]]:
    """The volume compaction for the object store at ``endpoint_url``; its report says what it did.

    The stack is the one in ``$E2E3D_STACK_DIR`` (which ``e2e3d airflow`` and ``e2e3d stack env`` give every
    component), else the default stack directory. When that stack runs SeaweedFS at ``endpoint_url``, its
    master compacts the volumes (:func:`vacuum_volumes`: how many it compacted, the bytes reclaimed);
    otherwise nothing is compacted and the report's ``skipped`` says why: MinIO frees a deleted object's
    space itself, or no embedded stack serves that endpoint (an object store of your own compacts on its own
    terms).
    """
    base = default_stack_dir()
    where = (
        f"{base} (${DEFAULT_STACK_DIR_ENV})"
        if os.environ.get(DEFAULT_STACK_DIR_ENV)
        else (f"{base} (the default; ${DEFAULT_STACK_DIR_ENV} is not set)")
    )
    info = read_state(base)
    if info is None or not is_running(info):
        return _skipped(
            f"no embedded stack runs in {where}, so nothing here compacts the volumes of {endpoint_url}: "
            "an object store of your own reclaims space on its own terms (SeaweedFS: `volume.vacuum`)"
        )
    if info.s3_endpoint.rstrip("/") != endpoint_url.rstrip("/"):
        return _skipped(
            f"{endpoint_url} is not the embedded stack in {where}, which serves {info.s3_endpoint}: "
            "its volumes are not compacted here"
        )
    if info.server != "seaweedfs":
        return _skipped(f"{info.server_name} reclaims a deleted object's space itself: there is nothing to compact")
    stack_dir = Path(info.base_dir)
    return lambda: vacuum_volumes(stack_dir)


def _skipped(reason: str) -> Callable[[], dict[str, Any]]:
    return lambda: {"skipped": reason}


def vacuum_volumes(base_dir: Path, garbage_threshold: float = 0.01) -> dict[str, Any]:
    """Have the stack's SeaweedFS master compact every volume whose deleted bytes exceed
    ``garbage_threshold`` of its size; how many volumes it compacted, the volumes' bytes on disk before and
    after, and ``done``, which says it in words."""
    if not 0.0 <= garbage_threshold < 1.0:
        raise ValueError(f"garbage_threshold is a share of a volume, 0 <= x < 1; got {garbage_threshold}")
    base = Path(base_dir).resolve()
    info = read_state(base)
    if info is None:
        raise StackError(f"no stack recorded in {base}")
    data_dir = Path(_weed_arg(info, "dir"))
    volumes, before = volume_bytes(data_dir)
    sizes = _data_files(data_dir)
    url = f"https://127.0.0.1:{_weed_arg(info, 'master.port')}/vol/vacuum?garbageThreshold={garbage_threshold}"
    try:
        response = _master_client(base).request("POST", url)
    except urllib3.exceptions.HTTPError as err:
        raise StackError(f"the SeaweedFS master at {url} did not answer: {err}") from err
    if response.status != 200:
        raise StackError(f"the SeaweedFS master refused the vacuum ({response.status}): {response.data[:300]!r}")
    json.loads(response.data)  # the topology it answers with: a master, not some other server on that port
    _, after = volume_bytes(data_dir)
    compacted = sum(1 for path, size in _data_files(data_dir).items() if size < sizes.get(path, 0))
    done = (
        f"compacted {compacted} of {volumes} SeaweedFS volumes, reclaiming {before - after} bytes"
        if compacted
        else f"compacted none of {volumes} SeaweedFS volumes: none had more than {garbage_threshold:.0%} deleted bytes"
    )
    return {
        "done": done,
        "compacted": compacted,
        "garbage_threshold": garbage_threshold,
        "volumes": volumes,
        "bytes_before": before,
        "bytes_after": after,
        "reclaimed_bytes": before - after,
    }
