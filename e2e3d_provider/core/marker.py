"""The SUCCESS marker: the commit protocol's last write, and the one object a reader trusts first.

A published set (``output/<job_id>/`` or an archived run) is complete when its ``SUCCESS`` exists and
names the sha256 of the set's ``manifest.json``. The marker's body also names the run (``job_id``,
``stamp``) and the manifest's totals, so a reader can tell a superseded or copied-in marker from the
run's own without reading the manifest. This module is the only place its body is written or read.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from e2e3d_provider.core.manifest import Manifest

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class SuccessMarker:
    """A SUCCESS marker as written, or as read (fields a foreign body lacks are ``None``; ``raw`` is the
    body exactly as stored, so it can be copied or put back byte for byte)."""

    job_id: str | None
    stamp: str | None
    manifest_sha256: str | None
    files: int | None = None
    total_bytes: int | None = None
    raw: bytes = b""

    @classmethod
    def of(cls, manifest: Manifest, manifest_sha256: str) -> SuccessMarker:
        """The marker that vouches for ``manifest``, stored as bytes whose sha256 is ``manifest_sha256``."""
        body = {
            "job_id": manifest.job_id,
            "stamp": manifest.stamp,
            "manifest_sha256": manifest_sha256,
            "files": len(manifest.files),
            "bytes": manifest.total_bytes,
        }
        raw = json.dumps(body, sort_keys=True).encode()
        return cls(manifest.job_id, manifest.stamp, manifest_sha256, len(manifest.files), manifest.total_bytes, raw)

    @classmethod
    def parse(cls, body: bytes) -> SuccessMarker:
        """Read a stored body. Never raises: a body no publish wrote (not JSON, fields missing or of the
        wrong type) reads with those fields ``None``, and :meth:`names_manifest` / :meth:`vouches_for`
        say no."""
        try:
            data: Any = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            data = {}

        def text(name: str) -> str | None:
            value = data.get(name)
            return value if isinstance(value, str) else None

        def count(name: str) -> int | None:
            value = data.get(name)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        sha = text("manifest_sha256")
        return cls(
            text("job_id"),
            text("stamp"),
            sha if sha and _SHA256.match(sha) else None,
            count("files"),
            count("bytes"),
            bytes(body),
        )

    @property
    def body(self) -> bytes:
        """The bytes to store."""
        return self.raw

    def names_manifest(self, manifest_bytes: bytes) -> bool:
        """Whether this marker vouches for exactly these manifest bytes."""
        return self.manifest_sha256 is not None and hashlib.sha256(manifest_bytes).hexdigest() == self.manifest_sha256

    def vouches_for(self, stamp: str) -> bool:
        """Whether a publish of run ``stamp`` wrote this marker: it names that run and a manifest."""
        return self.stamp == stamp and self.manifest_sha256 is not None
