"""When is an input dataset ready? Enough matching objects, none modified for ``stable_for`` seconds.

One pure function serves the sensor in every mode (poke, reschedule, deferrable): it looks only
at the objects' listing and the clock, so it needs no state kept between pokes.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from e2e3d_provider.core.transfer import RemoteObject

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
DEFAULT_PATTERNS = tuple(f"*{suffix}" for suffix in IMAGE_SUFFIXES)


def matches(key: str, patterns: Sequence[str]) -> bool:
    """True if the key's file name matches any glob (case-insensitive); no patterns match all."""
    name = key.rsplit("/", 1)[-1].lower()
    return not patterns or any(fnmatch.fnmatchcase(name, p.lower()) for p in patterns)


@dataclass(frozen=True)
class InputState:
    """What the input prefix holds now, and whether that makes it ready."""

    prefix: str
    count: int
    bytes: int
    newest: datetime | None
    ready: bool
    reason: str

    def to_xcom(self) -> dict[str, object]:
        return {"prefix": self.prefix, "count": self.count, "bytes": self.bytes}


def check_input(
    objects: Sequence[RemoteObject],
    prefix: str,
    patterns: Sequence[str],
    min_files: int,
    stable_for: float,
    now: datetime,
) -> InputState:
    """Ready when at least ``min_files`` objects match and none changed in the last ``stable_for`` s."""
    matching = [obj for obj in objects if matches(obj.key, patterns)]
    count, total = len(matching), sum(obj.size for obj in matching)
    times = [obj.last_modified for obj in matching if obj.last_modified is not None]
    newest = max(times) if times else None
    if count < min_files:
        return InputState(
            prefix,
            count,
            total,
            newest,
            False,
            f"{count} of {min_files} required files matching {list(patterns)} below {prefix}",
        )
    if stable_for > 0 and newest is not None:
        quiet = (now - newest).total_seconds()
        if quiet < stable_for:
            return InputState(
                prefix,
                count,
                total,
                newest,
                False,
                f"{count} files, last change {quiet:.1f}s ago (< {stable_for:g}s): upload in progress?",
            )
    return InputState(prefix, count, total, newest, True, f"{count} files ({total} bytes) ready below {prefix}")
