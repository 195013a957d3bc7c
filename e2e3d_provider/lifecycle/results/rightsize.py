"""Right-size a run directory: write level-of-detail, web and tiled variants of every result beside it,
and record them (with the preservation policy) in ``rightsize.json`` for publish.

Originals are only read, never changed or moved. Variants go to the reserved variant folders
(``mesh/lod1/...``, ``textures/web/...``); a rerun first clears those folders and the record, and a
failure removes whatever it wrote, so the run directory holds either a complete, recorded set of
variants or none (publish refuses unrecorded variant files).
"""

from __future__ import annotations

import logging
import posixpath
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e2e3d_provider.core.layout import (
    RESULT_FOLDERS,
    VARIANTS_NAME,
    is_result_original,
    is_variant_path,
    variant_relpath,
)
from e2e3d_provider.core.manifest import iter_run_files
from e2e3d_provider.core.variants import RightSizeRecord, Variant
from e2e3d_provider.core.xcom import RightSizeXCom
from e2e3d_provider.rightsize.limits import check_size
from e2e3d_provider.rightsize.policy import RightSizePolicy

log = logging.getLogger(__name__)

MESH_SUFFIXES = (".obj",)
TEXTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
POINTCLOUD_SUFFIXES = (".ply",)


def clear_variants(run_dir: Path) -> int:
    """Remove the record and every variant folder of the run directory; returns the files removed."""
    (run_dir / VARIANTS_NAME).unlink(missing_ok=True)
    removed = 0
    for folder in RESULT_FOLDERS:
        base = run_dir / folder
        if not base.is_dir():
            continue
        for child in sorted(base.iterdir()):
            if child.is_dir() and is_variant_path(f"{folder}/{child.name}/x"):
                removed += sum(1 for p in child.rglob("*") if p.is_file())
                shutil.rmtree(child)
    return removed


def originals_of(run_dir: Path) -> dict[str, list[str]]:
    """The results right-sizing starts from, by kind: files directly in ``mesh/``, ``textures/``,
    ``pointcloud/`` with a suffix it reads."""
    found: dict[str, list[str]] = {"mesh": [], "texture": [], "pointcloud": []}
    for rel, _ in iter_run_files(run_dir):
        folder, _, name = rel.partition("/")
        if "/" in name:
            continue
        suffix = Path(name).suffix.lower()
        if folder == "mesh" and suffix in MESH_SUFFIXES:
            found["mesh"].append(rel)
        elif folder == "textures" and suffix in TEXTURE_SUFFIXES:
            found["texture"].append(rel)
        elif folder == "pointcloud" and suffix in POINTCLOUD_SUFFIXES:
            found["pointcloud"].append(rel)
    return found


def _size(run_dir: Path, rel: str) -> int:
    return (run_dir / rel).stat().st_size


def right_size_texture(run_dir: Path, original: str, policy: RightSizePolicy, record: RightSizeRecord) -> None:
    from e2e3d_provider.rightsize import texture

    with texture.open_texture(run_dir / original, policy.max_pixels) as image:
        width, height, mode = image.width, image.height, image.mode
    record.originals[original] = {"width": width, "height": height, "pixels": width * height, "mode": mode}
    name = Path(original).name
    if Path(original).suffix.lower() == ".png":
        rel = variant_relpath(original, "lod0")
        figures = texture.optimize_png(
            run_dir / original,
            run_dir / rel,
            level=policy.png_level,
            min_gain=policy.png_min_gain,
            max_pixels=policy.max_pixels,
        )
        if figures is not None:
            figures.update(bytes=_size(run_dir, rel), pixels=width * height, of_original=_ratio(run_dir, rel, original))
            record.variants.append(Variant(rel, "lod", original, 0, figures))
        else:
            log.info("%s: oxipng saved less than png_min_gain; no lossless lod0 copy is kept", original)
    head = original.rpartition("/")[0]
    outputs = texture.pyramid(
        run_dir / original,
        run_dir / head,
        run_dir,
        fmt=policy.web_format,
        quality=policy.web_quality,
        min_size=policy.mip_min_size,
        tile_size=policy.tile_size,
        tile_threshold=policy.tile_threshold,
        stem=Path(name).stem,
        max_pixels=policy.max_pixels,
    )
    for out in outputs:
        figures = {**out.figures, "bytes": _size(run_dir, out.relpath)}
        record.variants.append(Variant(out.relpath, out.role, original, out.level, figures))


def _ratio(run_dir: Path, rel: str, original: str) -> float:
    return round(_size(run_dir, rel) / max(1, _size(run_dir, original)), 4)


def _mtl_path(mesh_rel: str, mtllib: str | None) -> str | None:
    """The run-relative path of a mesh's MTL, when it lies inside the run directory."""
    if not mtllib:
        return None
    rel = posixpath.normpath(posixpath.join(posixpath.dirname(mesh_rel), mtllib))
    return None if rel.startswith("..") else rel


#: MTL statements whose last word is a file (maps, bump, displacement, normals)
_MTL_FILES = ("map_", "bump", "disp", "decal", "norm", "refl")


def _texture_of(run_dir: Path, mtl_rel: str | None) -> str | None:
    """The run-relative path of the texture an MTL maps (``map_Kd``), if it names one here."""
    if mtl_rel is None or not (run_dir / mtl_rel).is_file():
        return None
    for line in (run_dir / mtl_rel).read_text(errors="replace").splitlines():
        words = line.split()
        if words[:1] == ["map_Kd"] and len(words) > 1:
            rel = posixpath.normpath(posixpath.join(posixpath.dirname(mtl_rel), words[-1]))
            return rel if not rel.startswith("..") and (run_dir / rel).is_file() else None
    return None


def _lod_mtl(run_dir: Path, mtl_rel: str, lod_dir: str) -> str:
    """The original MTL for an OBJ in ``lod_dir``: the same materials, every file it names rewritten to
    reach the same file from there. (Readers disagree on what a path inside an MTL is relative to, the MTL
    or the OBJ; a copy beside the LOD makes both the same, so every reader finds the one shared texture.)"""
    lines = []
    for line in (run_dir / mtl_rel).read_text(errors="replace").splitlines():
        words = line.split()
        if len(words) > 1 and words[0].startswith(_MTL_FILES):
            target = posixpath.normpath(posixpath.join(posixpath.dirname(mtl_rel), words[-1]))
            line = " ".join([*words[:-1], posixpath.relpath(target, lod_dir)])
        lines.append(line)
    return "\n".join(lines) + "\n"


def right_size_mesh(run_dir: Path, original: str, policy: RightSizePolicy, record: RightSizeRecord) -> None:
    """A mesh's level-of-detail chain (OBJs sharing the original's MTL and texture), a self-contained web GLB
    per level and, with ``mesh_tiles``, a 3D Tiles tileset of the chain (:mod:`..rightsize.delivery`)."""
    from e2e3d_provider.rightsize import delivery
    from e2e3d_provider.rightsize import mesh as meshes

    full = meshes.read_obj(run_dir / original, max_faces=policy.max_faces)
    record.originals[original] = {"faces": len(full.faces), "vertices": len(full.positions)}
    mtl = _mtl_path(original, full.mtllib)
    texture = _texture_of(run_dir, mtl)
    chain = meshes.lod_chain(
        full,
        policy.mesh_lod_ratios,
        policy.mesh_error_samples,
        seconds=policy.mesh_seconds,
        memory_bytes=policy.mesh_memory_bytes,
        what=str(run_dir / original),
    )
    level_figures = []
    for step in chain:
        level, ratio, lod = step.level, step.ratio, step.mesh
        figures: dict[str, Any] = {"faces": len(lod.faces), "vertices": len(lod.positions), "ratio": ratio}
        if level:
            figures.update(step.error)
            rel = variant_relpath(original, f"lod{level}")
            mtllib = None
            if mtl is not None and is_result_original(mtl) and (run_dir / mtl).is_file():
                # the LOD's own MTL, mapping the one texture the original's maps
                mtl_variant = variant_relpath(mtl, f"lod{level}")
                mtllib = posixpath.basename(mtl_variant)
                (run_dir / mtl_variant).parent.mkdir(parents=True, exist_ok=True)
                (run_dir / mtl_variant).write_text(_lod_mtl(run_dir, mtl, posixpath.dirname(mtl_variant)))
                figures_mtl = {"bytes": _size(run_dir, mtl_variant), "texture": texture}
                record.variants.append(Variant(mtl_variant, "lod", mtl, level, figures_mtl))
            elif full.mtllib:  # an MTL outside the result folders: pointed at where it is
                mtllib = posixpath.relpath(
                    posixpath.join(posixpath.dirname(original), full.mtllib), posixpath.dirname(rel)
                )
            meshes.write_obj(lod, run_dir / rel, mtllib, comment=f"LOD {level}: {ratio:g} of the faces of {original}")
            record.variants.append(Variant(rel, "lod", original, level, {**figures, "bytes": _size(run_dir, rel)}))
        else:
            figures.update(hausdorff=0.0, mean_distance=0.0)
        level_figures.append(figures)
    written = delivery.deliver(
        run_dir,
        original,
        chain,
        texture,
        options={
            "mesh_tiles": policy.mesh_tiles,
            "tile_faces": policy.tile_faces,
            "tile_texture_size": policy.tile_texture_size,
            "web_glb_compression": policy.web_glb_compression,
            "web_glb_texture_size": policy.web_glb_texture_size,
            "quality": policy.web_quality,
            "max_pixels": policy.max_pixels,
        },
        seconds=policy.mesh_seconds,
        memory_bytes=policy.mesh_memory_bytes,
    )
    for entry in written:
        figures = dict(entry["figures"])
        if entry["role"] == "web":  # a level's GLB: the level's figures, and its own
            figures = {**level_figures[entry["level"]], **figures}
            figures["of_original"] = _ratio(run_dir, entry["path"], original)
        record.variants.append(Variant(entry["path"], entry["role"], original, entry["level"], figures))


def right_size_pointcloud(run_dir: Path, original: str, policy: RightSizePolicy, record: RightSizeRecord) -> None:
    from e2e3d_provider.rightsize import pointcloud as clouds

    binary = variant_relpath(original, "lod0")
    cloud = clouds.to_binary(run_dir / original, run_dir / binary, max_line_bytes=policy.max_line_bytes)
    record.originals[original] = {"points": cloud.points}
    figures = {
        "points": cloud.points,
        "format": "binary_little_endian",
        "bytes": _size(run_dir, binary),
        "of_original": _ratio(run_dir, binary, original),
    }
    record.variants.append(Variant(binary, "lod", original, 0, figures))
    _copc_and_laz(run_dir, original, binary, policy, record)
    for level, ratio in enumerate(policy.pointcloud_lod_ratios, 1):
        target = max(1, int(cloud.points * ratio))
        size = clouds.voxel_size_for(cloud.sample, cloud.points, target, cloud.lower, cloud.upper)
        rel = variant_relpath(original, f"lod{level}")
        # at most 1.5x the asked points, and a cap that shrinks with the level, so a huge cloud's chain
        # stays a chain (1.5 M, 360 k, 90 k) instead of every level meeting the same cap
        share = ratio / policy.pointcloud_lod_ratios[0]
        cap = max(1, min(int(policy.pointcloud_max_points * share), int(target * 1.5)))
        points, used = clouds.voxel_downsample(run_dir / binary, run_dir / rel, size, cloud.lower, cap)
        figures = {
            "points": points,
            "ratio": ratio,
            "kept": round(points / cloud.points, 4),
            "voxel_size": used,
            "voxel_of_diagonal": round(used / (cloud.diagonal or 1.0), 6),
            "bytes": _size(run_dir, rel),
        }
        record.variants.append(Variant(rel, "lod", original, level, figures))


def _copc_and_laz(run_dir: Path, original: str, binary: str, policy: RightSizePolicy, record: RightSizeRecord) -> None:
    """The cloud's LAZ (``lod``, level 0: the compact download) and, with ``policy.copc``, its COPC (``stream``:
    what a viewer streams by range requests), both from its binary PLY, in the bounded child process."""
    from e2e3d_provider.rightsize import copc

    stem = Path(original).stem
    laz = variant_relpath(original, "lod0", f"{stem}.laz")
    stream = variant_relpath(original, "web", f"{stem}.copc.laz") if policy.copc else None
    written = copc.write_bounded(
        run_dir / binary,
        copc=None if stream is None else run_dir / stream,
        laz=run_dir / laz,
        node_points=policy.copc_node_points,
        max_points=policy.copc_max_points,
        seconds=policy.mesh_seconds,
        memory_bytes=policy.mesh_memory_bytes,
        what=str(run_dir / original),
    )
    figures = written["laz"]
    laz_figures = {key: figures[key] for key in ("format", "points", "scale")}
    record.variants.append(Variant(laz, "lod", original, 0, {**laz_figures, "bytes": _size(run_dir, laz)}))
    if stream is not None:
        figures = written["copc"]
        copc_figures = {key: figures[key] for key in ("format", "points", "nodes", "depth", "spacing", "cube")}
        record.variants.append(
            Variant(stream, "stream", original, None, {**copc_figures, "bytes": _size(run_dir, stream)})
        )


STEPS: dict[str, Callable[[Path, str, RightSizePolicy, RightSizeRecord], None]] = {
    "texture": right_size_texture,
    "mesh": right_size_mesh,
    "pointcloud": right_size_pointcloud,
}


def right_size_run(run_dir: Path, policy: RightSizePolicy, *, enabled: bool = True) -> RightSizeRecord:
    """Right-size every result of ``run_dir`` under ``policy`` (or, with ``enabled=False``, only record
    the preservation policy) and write the record last. Raises RightSizeInputError for a result it
    cannot read or that passes one of the policy's limits, after removing every variant it wrote: the
    originals stay exactly as they were."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    removed = clear_variants(run_dir)
    if removed:
        log.info("removed %d variant files of an earlier right-sizing", removed)
    record = RightSizeRecord(preservation=policy.preservation)
    record.statistics["enabled"] = enabled
    if enabled:
        try:
            for kind, originals in sorted(originals_of(run_dir).items(), key=lambda item: list(STEPS).index(item[0])):
                began = time.perf_counter()
                before = sum(_size(run_dir, rel) for rel in originals)
                count = len(record.variants)
                for rel in originals:
                    check_size(run_dir / rel, policy.max_input_bytes)  # before any reader holds it
                    STEPS[kind](run_dir, rel, policy, record)
                added = sum(v.figures.get("bytes", 0) for v in record.variants[count:])
                record.statistics[kind] = {
                    "originals": len(originals),
                    "variants": len(record.variants) - count,
                    "original_bytes": before,
                    "variant_bytes": added,
                    "seconds": round(time.perf_counter() - began, 2),
                }
        except BaseException:
            clear_variants(run_dir)
            raise
    record.write(run_dir)
    return record


#: import name -> distribution of what right-sizing needs (the ``rightsize`` extra)
DEPENDENCIES = {
    "numpy": "numpy",
    "scipy": "scipy",
    "meshoptimizer": "meshoptimizer",
    "DracoPy": "DracoPy",
    "oxipng": "pyoxipng",
    "copclib": "copclib",
    "laspy": "laspy[lazrs]",
    "lazrs": "lazrs",
}


def require_dependencies() -> None:
    """Raise ImportError naming every missing right-sizing library and the extra that installs them."""
    import importlib.util

    missing = [dist for module, dist in DEPENDENCIES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ImportError(
            f"right-sizing needs {', '.join(missing)}: pip install 'e2e3d-provider[rightsize]' "
            "(or turn right-sizing off with the DAG param right_size=false)"
        )


def right_size_job(
    run_dir: Path,
    metadata: Any | None,
    settings: dict[str, Any] | None = None,
    *,
    enabled: bool = True,
) -> RightSizeRecord:
    """Right-size a run under the policy the defaults, the ``e2e3d.config`` key ``rightsize`` (read
    through ``metadata``, a MetadataHook, when given) and ``settings`` (an operator's) make, in that
    order of precedence; see :func:`right_size_run`."""
    from e2e3d_provider.rightsize.policy import CONFIG_KEY

    if enabled:
        require_dependencies()
    configured = metadata.get_config(CONFIG_KEY, None) if metadata is not None else None
    if configured is not None and not isinstance(configured, dict):
        raise ValueError(f"e2e3d.config {CONFIG_KEY!r} must be a JSON object, not {configured!r}")
    policy = RightSizePolicy.from_settings(configured, settings)
    return right_size_run(run_dir, policy, enabled=enabled)


def summary(record: RightSizeRecord) -> RightSizeXCom:
    """A small XCom-sized account of a right-sizing: variants, bytes and seconds per kind."""
    kinds = {k: v for k, v in record.statistics.items() if isinstance(v, dict)}
    return {
        "enabled": bool(record.statistics.get("enabled", True)),
        "variants": len(record.variants),
        "original_bytes": sum(k["original_bytes"] for k in kinds.values()),
        "variant_bytes": sum(k["variant_bytes"] for k in kinds.values()),
        "seconds": round(sum(k["seconds"] for k in kinds.values()), 2),
        "dropped": list(record.preservation.get("drop", [])),
    }
