"""A small, deterministic demo reconstruction: the step users replace with their own.

From a folder of images it builds, with numpy and Pillow only:
- ``mesh/reconstructed_mesh.obj`` + ``.mtl``: a height field (luminance of the mean image as
  height) over a regular grid, with texture coordinates;
- ``textures/texture.png``: the mean image, the mesh's texture;
- ``pointcloud/pointcloud.ply``: one coloured point per sampled pixel of every image, lifted by
  its luminance, with the image index as depth;
- ``logs/reconstruct.log``: what it read and wrote.
Same input, same bytes out: nothing depends on time or randomness.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from e2e3d_provider.core.layout import MATERIAL_RELPATH, MESH_RELPATH, POINTCLOUD_RELPATH, TEXTURE_RELPATH
from e2e3d_provider.core.readiness import IMAGE_SUFFIXES
from e2e3d_provider.exceptions import ReconstructionError

GRID = 48  # mesh resolution (GRID x GRID vertices)
TEXTURE_SIZE = 256
POINT_STEP = 8  # one point every POINT_STEP pixels of each (resized) image
WORK_SIZE = 256


def load_images(input_dir: Path) -> list[tuple[str, np.ndarray]]:
    """Every image below ``input_dir`` as an RGB float array of WORK_SIZE x WORK_SIZE, sorted by path."""
    paths = sorted(p for p in input_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ReconstructionError(f"no images ({', '.join(IMAGE_SUFFIXES)}) below {input_dir}")
    images = []
    for path in paths:
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB").resize((WORK_SIZE, WORK_SIZE), Image.Resampling.BILINEAR)
        except (UnidentifiedImageError, OSError) as err:
            raise ReconstructionError(f"cannot read image {path.relative_to(input_dir)}: {err}") from err
        images.append((path.relative_to(input_dir).as_posix(), np.asarray(rgb, dtype=np.float32) / 255.0))
    return images


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def write_mesh(mean: np.ndarray, out: Path) -> int:
    """Height-field OBJ + MTL from the mean image; returns the number of faces."""
    small = (
        np.asarray(
            Image.fromarray((mean * 255).astype(np.uint8)).resize((GRID, GRID), Image.Resampling.BILINEAR),
            dtype=np.float32,
        )
        / 255.0
    )
    height = _luminance(small) * 0.25
    lines = [
        "# E2E3D demo reconstruction: height field of the mean image",
        "mtllib reconstructed_mesh.mtl",
        "o reconstructed_mesh",
    ]
    for row in range(GRID):
        for col in range(GRID):
            lines.append(f"v {col / (GRID - 1) - 0.5:.5f} {height[row, col]:.5f} {row / (GRID - 1) - 0.5:.5f}")
    for row in range(GRID):
        for col in range(GRID):
            lines.append(f"vt {col / (GRID - 1):.5f} {1 - row / (GRID - 1):.5f}")
    lines.append("usemtl texture")
    faces = 0
    for row in range(GRID - 1):
        for col in range(GRID - 1):
            a = row * GRID + col + 1
            b, c, d = a + 1, a + GRID, a + GRID + 1
            lines.append(f"f {a}/{a} {c}/{c} {b}/{b}")
            lines.append(f"f {b}/{b} {c}/{c} {d}/{d}")
            faces += 2
    (out / MESH_RELPATH).parent.mkdir(parents=True, exist_ok=True)
    (out / MESH_RELPATH).write_text("\n".join(lines) + "\n")
    (out / MATERIAL_RELPATH).write_text(
        "newmtl texture\nKa 1.000 1.000 1.000\nKd 1.000 1.000 1.000\nKs 0.000 0.000 0.000\n"
        "d 1.0\nillum 1\nmap_Kd ../textures/texture.png\n"
    )
    return faces


def write_texture(mean: np.ndarray, out: Path) -> None:
    (out / TEXTURE_RELPATH).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((mean * 255).round().astype(np.uint8)).resize(
        (TEXTURE_SIZE, TEXTURE_SIZE), Image.Resampling.BILINEAR
    ).save(out / TEXTURE_RELPATH, format="PNG", optimize=False)


def write_pointcloud(images: list[tuple[str, np.ndarray]], out: Path) -> int:
    """ASCII PLY with x y z and 8-bit colour per point; returns the number of points."""
    rows: list[str] = []
    for index, (_, rgb) in enumerate(images):
        sample = rgb[::POINT_STEP, ::POINT_STEP]
        height = _luminance(sample) * 0.25
        ys, xs = np.mgrid[0 : sample.shape[0], 0 : sample.shape[1]]
        colours = (sample * 255).round().astype(np.uint8).reshape(-1, 3)
        coords = np.stack(
            [
                xs.ravel() / (sample.shape[1] - 1) - 0.5,
                height.ravel(),
                ys.ravel() / (sample.shape[0] - 1) - 0.5 + index * 0.01,
            ],
            axis=1,
        )
        rows.extend(
            f"{x:.5f} {y:.5f} {z:.5f} {r} {g} {b}" for (x, y, z), (r, g, b) in zip(coords, colours, strict=True)
        )
    header = [
        "ply",
        "format ascii 1.0",
        "comment E2E3D demo point cloud",
        f"element vertex {len(rows)}",
        "property float x",
        "property float y",
        "property float z",
        "property uchar red",
        "property uchar green",
        "property uchar blue",
        "end_header",
    ]
    (out / POINTCLOUD_RELPATH).parent.mkdir(parents=True, exist_ok=True)
    (out / POINTCLOUD_RELPATH).write_text("\n".join(header + rows) + "\n")
    return len(rows)


def reconstruct(input_dir: Path, run_dir: Path, temp_dir: Path | None = None) -> dict[str, Any]:
    """Run the demo reconstruction from ``input_dir`` into the run layout at ``run_dir``.

    Returns small statistics (images, faces, points) for the manifest and PostgreSQL.
    """
    images = load_images(input_dir)
    mean = np.mean([rgb for _, rgb in images], axis=0)
    if temp_dir is not None:  # an intermediate artifact, as real pipelines leave in temp/
        temp_dir.mkdir(parents=True, exist_ok=True)
        np.save(temp_dir / "mean_image.npy", mean)
    (run_dir / "temp").mkdir(parents=True, exist_ok=True)  # a working file in the run dir: not published
    np.save(run_dir / "temp" / "mean_image.npy", mean)  # (the preservation policy drops temp/ by default)
    faces = write_mesh(mean, run_dir)
    write_texture(mean, run_dir)
    points = write_pointcloud(images, run_dir)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "logs" / "reconstruct.log").write_text(
        "E2E3D demo reconstruction\n"
        + "".join(f"input {name}\n" for name, _ in images)
        + f"mesh faces {faces}\npoint cloud points {points}\ntexture {TEXTURE_SIZE}x{TEXTURE_SIZE}\n"
    )
    return {"images": len(images), "faces": faces, "points": points}
