"""What a browser gets of a mesh's level-of-detail chain: a self-contained GLB per level (normals, the texture
embedded, meshopt or Draco) and a 3D Tiles 1.1 tileset (:mod:`.tiles`). Pure functions; no Airflow.

The work (decoding the texture, re-packing it per tile, the native encoders) runs in the bounded worker
(:mod:`.worker`) under the same time and memory settings as the chain (``mesh_seconds``,
``mesh_memory_bytes``): :func:`deliver` sends the chain's arrays there, :func:`deliver_arrays` is the child's
side, which writes the files at their variant paths (:func:`..core.layout.variant_relpath`) and returns what
it wrote with its figures.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from e2e3d_provider.core.layout import variant_relpath
from e2e3d_provider.rightsize.limits import MAX_PIXELS

#: the smallest side of a web GLB's embedded texture (coarser levels halve it down to this)
MIN_WEB_TEXTURE = 256


def deliver(
    run_dir: Path,
    original: str,
    levels: Sequence[Any],
    texture: str | None,
    *,
    options: dict[str, Any],
    seconds: float,
    memory_bytes: int,
) -> list[dict[str, Any]]:
    """Write the web GLB of each of ``levels`` (:class:`.mesh.Level`, level 0 the original) and, when
    ``options["mesh_tiles"]``, the tileset, for the mesh ``original`` of ``run_dir`` whose UVs map the
    run-relative ``texture``; in the bounded worker. Returns one ``{"path", "role", "level", "figures"}`` per
    file written. ``options``: ``mesh_tiles``, ``tile_faces``, ``tile_texture_size``,
    ``web_glb_compression``, ``web_glb_texture_size``, ``quality``, ``max_pixels``."""
    from e2e3d_provider.rightsize.worker import run_bounded

    full = levels[0].mesh
    arrays: dict[str, np.ndarray] = {"positions": full.positions, "faces0": full.faces}
    if full.uvs is not None:
        arrays["uvs"] = full.uvs
    if full.position_ids is not None:
        arrays["position_ids"] = full.position_ids
    for step in levels[1:]:
        arrays[f"faces{step.level}"] = step.mesh.faces
        arrays[f"used{step.level}"] = step.used
        arrays[f"samples{step.level}"] = step.samples
    out = run_bounded(
        f"{__name__}:deliver_arrays",
        arrays,
        # absolute: the worker runs in a temporary folder of its own
        {
            "run_dir": str(Path(run_dir).absolute()),
            "original": original,
            "texture": texture,
            "levels": len(levels),
            **options,
        },
        seconds=seconds,
        memory_bytes=memory_bytes,
        what=f"{run_dir / original}: writing its web GLBs and 3D tiles",
        preload=("meshoptimizer", "DracoPy", "scipy.sparse.csgraph", "PIL.Image", "PIL.JpegImagePlugin"),
    )
    return list(json.loads(out["report"].tobytes().decode()))


def deliver_arrays(
    arrays: dict[str, np.ndarray],
    *,
    run_dir: str,
    original: str,
    texture: str | None,
    levels: int,
    mesh_tiles: bool,
    tile_faces: int,
    tile_texture_size: int,
    web_glb_compression: str,
    web_glb_texture_size: int,
    quality: int,
    max_pixels: int = MAX_PIXELS,
) -> dict[str, np.ndarray]:
    """:func:`deliver`'s work, run by the worker; returns ``{"report": JSON of the files written}``."""
    from PIL import Image

    from e2e3d_provider.rightsize import gltf, tiles
    from e2e3d_provider.rightsize.texture import open_texture

    root = Path(run_dir)
    positions, uvs = arrays["positions"], arrays.get("uvs")
    ids = arrays.get("position_ids", np.arange(len(positions), dtype=np.int64))
    chain: list[tiles.TileLevel] = []
    for level in range(levels):
        used = arrays[f"used{level}"] if level else np.arange(len(positions))
        faces = arrays[f"faces{level}"]
        chain.append(
            tiles.TileLevel(
                positions=positions[used],
                faces=faces,
                uvs=uvs[used] if uvs is not None else None,
                normals=gltf.vertex_normals(positions[used], faces, ids[used]),
                samples=arrays[f"samples{level}"] if level else np.zeros((0, 4)),
            )
        )
    with contextlib.ExitStack() as stack:
        image: Image.Image | None = None
        if texture is not None and uvs is not None:
            opened = stack.enter_context(open_texture(root / texture, max_pixels))
            image = opened if opened.mode in ("RGB", "L") else opened.convert("RGB")
        report = _web_glbs(chain, root, original, image, web_glb_compression, web_glb_texture_size, quality)
        if mesh_tiles:
            report += _tileset(chain, root, original, image, tile_faces, tile_texture_size, quality)
    return {"report": np.frombuffer(json.dumps(report).encode(), dtype=np.uint8)}


def _resized(image: Any, factor: float) -> Any:
    """``image`` scaled by ``factor`` (box filter: each output pixel the mean of the pixels it covers)."""
    from PIL import Image

    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.BOX)


def _web_glbs(
    chain: list[Any], root: Path, original: str, image: Any, compression: str, texture_size: int, quality: int
) -> list[dict[str, Any]]:
    """One self-contained GLB per level at ``<folder>/lod<n>/<stem>.glb``; level 0's texture at most
    ``texture_size`` a side, each coarser level's half the last (down to :data:`MIN_WEB_TEXTURE`)."""
    from e2e3d_provider.rightsize import gltf, tiles

    report: list[dict[str, Any]] = []
    web_image = image
    if image is not None and max(image.size) > texture_size:
        web_image = _resized(image, texture_size / max(image.size))
    for level, step in enumerate(chain):
        embedded, texture_px = None, 0
        if web_image is not None:
            embedded = tiles.jpeg_bytes(web_image, quality)
            texture_px = web_image.width * web_image.height
        rel = variant_relpath(original, f"lod{level}", f"{Path(original).stem}.glb")
        size = gltf.write_glb(
            gltf.GlbMesh(step.positions, step.faces, step.uvs, step.normals),
            root / rel,
            texture=embedded,
            compression=compression,
        )
        figures = {
            "bytes": size,
            "compression": compression,
            "normals": True,
            "texture": "embedded" if embedded is not None else None,
            "texture_px": texture_px,
        }
        report.append({"path": rel, "role": "web", "level": level, "figures": figures})
        if web_image is not None and max(web_image.size) // 2 >= MIN_WEB_TEXTURE:
            web_image = _resized(web_image, 0.5)  # the next, coarser level's texture
    return report


def _tileset(
    chain: list[Any], root: Path, original: str, image: Any, tile_faces: int, texture_size: int, quality: int
) -> list[dict[str, Any]]:
    """The tileset at ``<folder>/tiles/<stem>/tileset.json`` and its tiles, each file at its variant path."""
    from e2e3d_provider.rightsize import tiles

    stem = Path(original).stem
    tileset_rel = variant_relpath(original, f"tiles/{stem}", "tileset.json")
    figures = tiles.build_tileset(
        chain,
        root / tileset_rel.rpartition("/")[0],
        image=image,
        tile_faces=tile_faces,
        texture_size=texture_size,
        quality=quality,
    )
    report: list[dict[str, Any]] = []
    for tile in figures.pop("tiles"):
        uri, level = tile.pop("uri"), tile.pop("level")
        depth, _, name = uri.partition("/")
        report.append(
            {
                "path": variant_relpath(original, f"tiles/{stem}/{depth}", name),
                "role": "stream",
                "level": level,
                "figures": tile,
            }
        )
    figures["tiles"] = len(report)
    report.append({"path": tileset_rel, "role": "stream", "level": None, "figures": figures})
    return report
