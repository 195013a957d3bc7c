"""What right-sizing left in a run directory (``rightsize.json``): every variant with its role, the
original it derives from, its level and figures, and which intermediates the preservation policy drops.

The right-sizing step writes it last (atomically); publish reads it to annotate the manifest and to leave
dropped intermediates out. A file in a variant folder that the record does not name (a right-sizing that
stopped half-way) makes publish refuse, so no unexplained variant is ever published.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from e2e3d_provider.core.layout import VARIANTS_NAME, is_result_original, is_variant_path, validate_relpath
from e2e3d_provider.core.manifest import (
    VARIANT_ROLES,
    FileEntry,
    check_figures,
    check_level,
    check_object,
    load_json_object,
    write_atomic,
)
from e2e3d_provider.exceptions import ManifestError, UnsafePathError

RECORD_VERSION = 1
#: the preservation policy when none is given: logs are published, temp/ is not, nothing goes after archive
DEFAULT_PRESERVATION: dict[str, list[str]] = {"keep": ["logs/"], "drop": ["temp/"], "remove_after_archive": []}


@dataclass(frozen=True)
class Variant:
    """One derived file: run-relative path, role (``lod``, ``web``, ``tile``, ``stream``), the original it
    derives from, level (0 = full resolution; ``None`` for a file of no one level, such as a tileset or a
    COPC octree) and figures."""

    path: str
    role: str
    source: str
    level: int | None
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class RightSizeRecord:
    """Variants, figures of the originals, and the preservation policy of one run directory."""

    variants: list[Variant] = field(default_factory=list)
    originals: dict[str, dict[str, Any]] = field(default_factory=dict)
    preservation: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_PRESERVATION))
    statistics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        body = {
            "version": RECORD_VERSION,
            "variants": [asdict(v) for v in self.variants],
            "originals": self.originals,
            "preservation": self.preservation,
            "statistics": self.statistics,
        }
        return json.dumps(body, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> RightSizeRecord:
        """The record ``text`` holds, every value checked as a manifest's are (publish copies them into one)."""
        try:
            data = load_json_object(text, VARIANTS_NAME)
            if data.get("version") != RECORD_VERSION or isinstance(data.get("version"), bool):
                raise ManifestError(f"unsupported {VARIANTS_NAME} version {data.get('version')!r}")
            return cls(
                variants=[_variant(v) for v in data["variants"]],
                originals={
                    validate_relpath(k): check_object(v, f"figures of {k}")
                    for k, v in check_object(data.get("originals"), "originals").items()
                },
                preservation=preservation_policy(data.get("preservation")),
                statistics=check_object(data.get("statistics"), "statistics"),
            )
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as err:
            if isinstance(err, ManifestError):
                raise ManifestError(f"{VARIANTS_NAME}: {err}") from None
            raise ManifestError(f"malformed {VARIANTS_NAME}: {err}") from err

    def write(self, run_dir: Path) -> None:
        write_atomic(run_dir / VARIANTS_NAME, self.to_json().encode())

    @classmethod
    def read(cls, run_dir: Path) -> RightSizeRecord | None:
        """The run's record, or ``None`` when right-sizing never ran there. A record that is a symbolic link
        is refused (``O_NOFOLLOW``), never followed to a file elsewhere."""
        path = run_dir / VARIANTS_NAME
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as err:
            if path.is_symlink():
                raise UnsafePathError(f"{path} is a symbolic link; right-sizing writes its record as a file") from err
            raise
        with os.fdopen(fd, "rb") as handle:
            return cls.from_json(handle.read())


def _variant(item: object) -> Variant:
    """One recorded variant: a path in a variant folder, a variant role, the original's path, a level, figures."""
    if not isinstance(item, dict):
        raise ManifestError(f"a variant must be a JSON object, not {item!r}")
    path, role = validate_relpath(item["path"]), item["role"]
    if role not in VARIANT_ROLES:
        raise ManifestError(f"{path}: unknown variant role {role!r} (roles: {', '.join(VARIANT_ROLES)})")
    try:
        return Variant(
            path,
            role,
            validate_relpath(item["source"]),
            None if item["level"] is None else check_level(item["level"]),
            check_figures(item.get("figures"), role) or {},
        )
    except ManifestError as err:
        raise ManifestError(f"{path}: {err}") from None


def preservation_policy(value: Any) -> dict[str, list[str]]:
    """A validated preservation policy: ``keep``, ``drop`` and ``remove_after_archive``, each a list of
    run-relative folder prefixes ending in ``/``; missing lists take :data:`DEFAULT_PRESERVATION`'s."""
    value = dict(value or {})
    unknown = set(value) - set(DEFAULT_PRESERVATION)
    if unknown:
        raise ValueError(f"unknown preservation keys {sorted(unknown)} (use {sorted(DEFAULT_PRESERVATION)})")
    policy = {}
    for key, default in DEFAULT_PRESERVATION.items():
        prefixes = value.get(key, default)
        if isinstance(prefixes, str) or not all(isinstance(p, str) for p in prefixes):
            raise ValueError(f"preservation {key!r} must be a list of folder prefixes, not {prefixes!r}")
        checked = [validate_relpath(p.strip("/")) + "/" for p in prefixes]
        for prefix in checked:
            if prefix.split("/")[0] in ("mesh", "textures", "pointcloud"):
                raise ValueError(f"preservation {key!r}: {prefix} holds results; results are always published")
        policy[key] = checked
    both = sorted(set(policy["drop"]) & set(policy["keep"]))
    if both:
        raise ValueError(f"a prefix cannot be both kept and dropped: {both}")
    return policy


def dropped_by(relpath: str, preservation: dict[str, list[str]]) -> str | None:
    """The ``drop`` prefix that keeps ``relpath`` out of the published set, if any."""
    return next((p for p in preservation.get("drop", []) if relpath.startswith(p)), None)


@dataclass
class Selection:
    """The files of a run directory that publish sends, and what the preservation policy left out."""

    files: list[tuple[str, Path]]
    dropped: list[dict[str, Any]]


def select_published(files: list[tuple[str, Path]], record: RightSizeRecord | None) -> Selection:
    """Apply a run's record to its files: dropped intermediates are left out (and summed per prefix), and
    a file in a variant folder that the record does not name is refused (:class:`ManifestError`)."""
    sizes = {rel: path.stat().st_size for rel, path in files} if record is not None else {}
    kept, dropped = select_paths([rel for rel, _ in files], sizes, record)
    paths = dict(files)
    return Selection([(rel, paths[rel]) for rel in kept], dropped)


def select_paths(
    relpaths: list[str], sizes: dict[str, int], record: RightSizeRecord | None
) -> tuple[list[str], list[dict[str, Any]]]:
    """:func:`select_published` over run-relative paths and their sizes (a hand-off's, say): the paths
    published, and per dropped prefix its files and bytes."""
    named = {v.path for v in record.variants} if record else set()
    stray = [rel for rel in relpaths if is_variant_path(rel) and rel not in named]
    if stray:
        raise ManifestError(
            f"{len(stray)} files in variant folders were not recorded by right-sizing (e.g. {stray[0]}): "
            "it stopped part-way; run the right-sizing step again before publishing"
        )
    missing = sorted(named - set(relpaths))
    if missing:
        raise ManifestError(f"right-sizing recorded variants that are gone: {', '.join(missing[:5])}")
    if record is None:
        return list(relpaths), []
    kept: list[str] = []
    dropped: dict[str, dict[str, Any]] = {}
    for rel in relpaths:
        prefix = dropped_by(rel, record.preservation)
        if prefix is None:
            kept.append(rel)
        else:
            totals = dropped.setdefault(prefix, {"prefix": prefix, "files": 0, "bytes": 0})
            totals["files"] += 1
            totals["bytes"] += sizes[rel]
    return kept, list(dropped.values())


def annotate(entries: list[FileEntry], record: RightSizeRecord | None) -> list[FileEntry]:
    """``entries`` with their role, source, level and figures from the record: variants as recorded,
    results as ``original`` (with their figures), everything else as ``intermediate``."""
    if record is None:
        return entries
    variants = {v.path: v for v in record.variants}
    out = []
    for e in entries:
        variant = variants.get(e.path)
        level: int | None
        if variant is not None:
            role, source, level, figures = variant.role, variant.source, variant.level, variant.figures or None
        elif is_result_original(e.path):
            figures = record.originals.get(e.path)
            role, source, level = "original", None, 0 if figures else None
        else:
            role, source, level, figures = "intermediate", None, None, None
        out.append(FileEntry(e.path, e.size, e.sha256, e.etag, role, source, level, figures))
    return out
