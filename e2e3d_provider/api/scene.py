"""What a 3D viewer loads of a job: its mesh tilesets and COPC point clouds, read from the published manifest.

Right-sizing records each streamable result as a ``stream`` variant with figures that say what it is
(``format`` ``3dtiles`` for a tileset.json, ``copc`` for a COPC file) and where it lies (the tileset root's
``box``, the octree's ``cube``). The scene lists them with their file routes, so a viewer needs no second
request to frame the model, and every tile or node it fetches afterwards goes through the same route.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from e2e3d_provider.api.schemas import Scene, ScenePointcloud, SceneTileset
from e2e3d_provider.core.manifest import FileEntry
from e2e3d_provider.exceptions import ManifestError

#: ``figures["format"]`` of the files a scene lists (a tile's own format, ``3dtiles-tile``, is not listed:
#: the tileset names its tiles)
TILESET_FORMAT, COPC_FORMAT = "3dtiles", "copc"


def _numbers(figures: dict[str, Any], name: str, count: int, path: str) -> list[float]:
    value = figures.get(name)
    if (
        not isinstance(value, list)
        or len(value) != count
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise ManifestError(f"{path}: figure {name!r} must be {count} finite numbers, not {value!r}")
    return [float(v) for v in value]


def _number(figures: dict[str, Any], name: str, path: str, *, whole: bool = False) -> float:
    value = figures.get(name)
    kinds = (int,) if whole else (int, float)
    if not isinstance(value, kinds) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ManifestError(f"{path}: figure {name!r} must be a {'whole ' if whole else ''}number >= 0, not {value!r}")
    return value


def scene_of(job_id: str, stamp: str, entries: Iterable[FileEntry], route: Callable[[str], str]) -> Scene:
    """The scene of a published set: each ``stream`` tileset and COPC file with its route (``route(path)``)
    and the figures a viewer frames it by, in path order. A listed file whose figures lack what the scene
    needs raises :class:`ManifestError` (what is stored is wrong: the API answers 409)."""
    tilesets, pointclouds = [], []
    for e in sorted(entries, key=lambda e: e.path):
        figures = e.figures or {}
        if e.role != "stream":
            continue
        if figures.get("format") == TILESET_FORMAT:
            tilesets.append(
                SceneTileset(
                    path=e.path,
                    route=route(e.path),
                    geometric_error=_number(figures, "geometric_error", e.path),
                    box=_numbers(figures, "box", 12, e.path),
                )
            )
        elif figures.get("format") == COPC_FORMAT:
            pointclouds.append(
                ScenePointcloud(
                    path=e.path,
                    route=route(e.path),
                    points=int(_number(figures, "points", e.path, whole=True)),
                    cube=_numbers(figures, "cube", 4, e.path),
                )
            )
    return Scene(job_id=job_id, stamp=stamp, tilesets=tilesets, pointclouds=pointclouds, up="y")
