"""Textures: a losslessly optimized PNG (oxipng; pixels checked identical), a lossy web variant, a mip
pyramid and, for large textures, tiles with an index. Pure functions over files; no Airflow.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from e2e3d_provider.exceptions import RightSizeInputError
from e2e3d_provider.rightsize.limits import MAX_PIXELS

#: pixel modes right-sizing reads (8 bits per channel); anything else is refused, not guessed at
SUPPORTED_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")
#: file suffix and Pillow format of each web format
WEB_FORMATS = {"jpeg": (".jpg", "JPEG"), "webp": (".webp", "WEBP")}

#: Pillow raises these for damaged files
_UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError)


@contextmanager
def open_texture(path: Path, max_pixels: int = MAX_PIXELS) -> Iterator[Image.Image]:
    """The image at ``path``, fully decoded, or :class:`RightSizeInputError` if it is not a readable
    image in a supported mode, or has more than ``max_pixels`` pixels (checked from its header, before
    any pixel is decoded: a 24000 x 24000 PNG of 1.7 MB decodes into gigabytes).

    Pillow's own decompression-bomb limit (2 x ``PIL.Image.MAX_IMAGE_PIXELS``, 178,956,970 pixels unless
    the process changed it) refuses larger images first; its warning between 1 x and 2 x is silenced here,
    since ``max_pixels`` decides."""
    image = _open_checked(path, max_pixels)
    with image:  # errors of the caller's own work while it is open are the caller's, not "unreadable"
        yield image


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    """:func:`open_texture`'s checks: the header's size, mode and bit depth first, then the decode."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as err:
        raise RightSizeInputError(f"{path} is too large to decode: {err}") from None
    except _UNREADABLE as err:
        raise RightSizeInputError(f"{path} is not a readable image: {err}") from None
    try:
        width, height = image.size
        if width * height > max_pixels:
            raise RightSizeInputError(
                f"{path} is {width} x {height} = {width * height:,} pixels, more than max_pixels = {max_pixels:,} "
                "(raise max_pixels if the texture is sound)"
            )
        if image.mode not in SUPPORTED_MODES:
            raise RightSizeInputError(
                f"{path}: pixel mode {image.mode} is not supported (use one of {', '.join(SUPPORTED_MODES)})"
            )
        if deep := _deep_rawmode(image):
            raise RightSizeInputError(
                f"{path}: 16 bits per channel ({deep}) is not supported; right-sizing reads 8 bits per channel "
                "(Pillow would silently drop the low 8 bits)"
            )
        image.load()
    except Image.DecompressionBombError as err:  # a format whose size is known only as it decodes
        image.close()
        raise RightSizeInputError(f"{path} is too large to decode: {err}") from None
    except _UNREADABLE as err:
        image.close()
        raise RightSizeInputError(f"{path} is not a readable image: {err}") from None
    except BaseException:
        image.close()
        raise
    return image


def _deep_rawmode(image: Image.Image) -> str | None:
    """The raw mode of a not yet decoded image whose file stores 16 bits a channel (``RGB;16B``,
    ``RGBA;16B``, ``LA;16B``), which Pillow decodes into an 8-bit mode, or ``None``."""
    for tile in getattr(image, "tile", None) or []:  # ImageFile's list of what its decoder will read
        args = tile[3]
        rawmode = args[0] if isinstance(args, tuple) and args else args
        if isinstance(rawmode, str) and ";16" in rawmode:
            return rawmode
    return None


def pixel_digest(image: Image.Image, mode: str) -> str:
    """SHA-256 of the pixels of ``image`` in ``mode`` with its size: equal digests, identical pixels."""
    converted = image if image.mode == mode else image.convert(mode)
    digest = hashlib.sha256(f"{converted.size}{mode}".encode())
    digest.update(converted.tobytes())
    return digest.hexdigest()


def optimize_png(
    source: Path, target: Path, level: int = 2, min_gain: float = 0.0, max_pixels: int = MAX_PIXELS
) -> dict[str, Any] | None:
    """A losslessly recompressed copy of the PNG ``source`` at ``target`` (oxipng at ``level``), kept
    only when it is smaller by more than ``min_gain`` (a fraction of the source's bytes) and its pixels
    are identical to the source's (checked by decoding both). Returns its figures, or ``None`` when
    oxipng could not make it small enough (nothing is written). A source over ``max_pixels`` is refused."""
    import oxipng

    with open_texture(source, max_pixels) as image:
        mode, size, before = image.mode, image.size, pixel_digest(image, image.mode)
        if image.format != "PNG":
            return None
    partial = target.with_name(target.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        oxipng.optimize(source, partial, level=level)
        saved = 1 - partial.stat().st_size / source.stat().st_size
        if saved <= 0 or saved < min_gain:
            return None
        with open_texture(partial, max_pixels) as optimized:
            if optimized.size != size or pixel_digest(optimized, mode) != before:
                raise RightSizeInputError(f"oxipng changed the pixels of {source}: the optimized copy is discarded")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return {"width": size[0], "height": size[1], "mode": mode, "pixels_identical": True, "format": "png"}


def _web_ready(image: Image.Image, fmt: str) -> Image.Image:
    """``image`` in a mode the web format stores (JPEG has no alpha; palettes are expanded)."""
    has_alpha = image.mode in ("LA", "RGBA") or (image.mode == "P" and "transparency" in image.info)
    if fmt == "jpeg":
        return image.convert("RGB") if image.mode != "L" else image
    return image.convert("RGBA" if has_alpha else "RGB")


def save_web(image: Image.Image, target: Path, fmt: str, quality: int) -> None:
    """``image`` saved in the web format ``fmt`` at ``quality``, atomically."""
    pillow_format = WEB_FORMATS[fmt][1]
    partial = target.with_name(target.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        extra = {"method": 4} if fmt == "webp" else {"optimize": True, "progressive": True}
        _web_ready(image, fmt).save(partial, format=pillow_format, quality=quality, **extra)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


@dataclass(frozen=True)
class TextureOutput:
    """One file right-sizing wrote for a texture: where (relative to the run directory), its role
    (``lod``, ``web`` or ``tile``), its level (0 = full resolution, n = 1/2^n) and figures."""

    relpath: str
    role: str
    level: int
    figures: dict[str, Any]


def pyramid(
    source: Path,
    out_dir: Path,
    run_dir: Path,
    *,
    fmt: str = "jpeg",
    quality: int = 85,
    min_size: int = 256,
    tile_size: int = 1024,
    tile_threshold: int = 4096,
    stem: str = "texture",
    max_pixels: int = MAX_PIXELS,
) -> list[TextureOutput]:
    """The web variant (full resolution, lossy) and the mip pyramid (each level half the last, while it is
    at least ``min_size`` on its longer side) of ``source`` in ``out_dir``; when the texture is larger
    than ``tile_threshold`` on a side, every level larger than ``tile_size`` is also cut into
    ``tile_size`` tiles, listed with their level, row and column in ``tiles/index.json``. Paths in the
    result are relative to ``run_dir``. A source over ``max_pixels`` is refused."""
    if fmt not in WEB_FORMATS:
        raise ValueError(f"unknown web format {fmt!r} (use {', '.join(WEB_FORMATS)})")
    suffix = WEB_FORMATS[fmt][0]
    outputs: list[TextureOutput] = []

    def rel(path: Path) -> str:
        return path.relative_to(run_dir).as_posix()

    with open_texture(source, max_pixels) as original:
        tiled = max(original.size) > tile_threshold
        index: dict[str, Any] = {"tile_size": tile_size, "format": fmt, "levels": [], "tiles": []}
        level, image = 0, original
        while True:
            width, height = image.size
            # level 0 is the web variant (full resolution, lossy); the others are the mips
            target = out_dir / ("web" if level == 0 else f"lod{level}") / f"{stem}{suffix}"
            save_web(image, target, fmt, quality)
            figures = {"width": width, "height": height, "format": fmt}
            outputs.append(TextureOutput(rel(target), "web" if level == 0 else "lod", level, figures))
            if tiled and max(width, height) > tile_size:
                rows, cols = -(-height // tile_size), -(-width // tile_size)
                index["levels"].append({"level": level, "width": width, "height": height, "rows": rows, "cols": cols})
                for row in range(rows):
                    for col in range(cols):
                        left, top = col * tile_size, row * tile_size
                        box = (left, top, min(width, left + tile_size), min(height, top + tile_size))
                        target = out_dir / "tiles" / str(level) / f"{row}_{col}{suffix}"
                        save_web(image.crop(box), target, fmt, quality)
                        figures = {"row": row, "col": col, "width": box[2] - box[0], "height": box[3] - box[1]}
                        outputs.append(TextureOutput(rel(target), "tile", level, figures))
                        index["tiles"].append({"level": level, **figures, "path": rel(target)})
            if max(width, height) // 2 < min_size or min(width, height) < 2:
                break  # the next mip would be smaller than min_size
            image = image.reduce(2) if image.mode not in ("1", "P") else image.convert("RGBA").reduce(2)
            level += 1
        if index["tiles"]:
            target = out_dir / "tiles" / "index.json"
            target.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
            figures = {"tiles": len(index["tiles"]), "levels": len(index["levels"]), "index": True}
            outputs.append(TextureOutput(rel(target), "tile", 0, figures))
    return outputs
