"""Realistic reconstruction results, made procedurally: a displaced terrain mesh with UVs (OBJ + MTL), a
large texture (PNG) and a coloured point cloud in ASCII PLY, as photogrammetry tools write them.

``make_results(run_dir, scale)`` writes them in the run layout; ``scale="bench"`` gives the sizes of the
right-sizing benchmark (about 1 M faces, 8192 x 8192 pixels, 5 M points), ``scale="test"`` a few
thousand of each for the test suite. Same arguments, same bytes: the noise is seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from e2e3d_provider.rightsize.formatting import format_rows

MESH_RELPATH = "mesh/reconstructed_mesh.obj"
MATERIAL_RELPATH = "mesh/reconstructed_mesh.mtl"
TEXTURE_RELPATH = "textures/texture.png"
POINTCLOUD_RELPATH = "pointcloud/pointcloud.ply"


@dataclass(frozen=True)
class Scale:
    grid: int  # vertices per side of the terrain: 2 (grid - 1)^2 faces
    texture: int  # pixels per side
    points: int


SCALES = {
    "bench": Scale(grid=708, texture=8192, points=5_000_000),  # 999,698 faces
    "test": Scale(grid=40, texture=1100, points=20_000),
    "tiny": Scale(grid=12, texture=64, points=500),
}


def terrain_height(x: np.ndarray, z: np.ndarray, seed: int = 7) -> np.ndarray:
    """Fractal height over [0, 1]^2: octaves of randomly oriented waves, ridged like eroded hills."""
    rng = np.random.default_rng(seed)
    height = np.zeros(np.broadcast(x, z).shape)
    amplitude, frequency = 0.12, 2.0
    for _ in range(7):
        for _ in range(3):
            angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
            wave = np.sin(2 * np.pi * frequency * (x * np.cos(angle) + z * np.sin(angle)) + phase)
            height += amplitude * (1 - np.abs(wave)) / 3
        amplitude *= 0.5
        frequency *= 2.1
    return height


def write_mesh(run_dir: Path, grid: int) -> int:
    """A terrain OBJ (vertices, UVs, triangles as ``f v/vt``) and its MTL; returns the face count."""
    lin = np.linspace(0.0, 1.0, grid)
    xs, zs = np.meshgrid(lin, lin)
    ys = terrain_height(xs, zs)
    positions = np.stack([xs.ravel() * 100 - 50, ys.ravel() * 100, zs.ravel() * 100 - 50], axis=1)
    uvs = np.stack([xs.ravel(), 1 - zs.ravel()], axis=1)
    rows, cols = np.mgrid[0 : grid - 1, 0 : grid - 1]
    a = (rows * grid + cols).ravel() + 1
    b, c, d = a + 1, a + grid, a + grid + 1
    faces = np.concatenate([np.stack([a, c, b], 1), np.stack([b, c, d], 1)])
    faces = np.repeat(faces, 2, axis=1)  # v/vt pairs share the index
    path = run_dir / MESH_RELPATH
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as out:
        out.write("# generated terrain (bench/rightsize_data.py)\nmtllib reconstructed_mesh.mtl\no terrain\n")
        out.writelines(format_rows("v %.6f %.6f %.6f\n", positions))
        out.writelines(format_rows("vt %.6f %.6f\n", uvs))
        out.write("usemtl texture\n")
        out.writelines(format_rows("f %d/%d %d/%d %d/%d\n", faces))
    (run_dir / MATERIAL_RELPATH).write_text(
        "newmtl texture\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1.0\nillum 1\nmap_Kd ../textures/texture.png\n"
    )
    return len(faces)


def write_texture(run_dir: Path, size: int) -> None:
    """An RGB texture: terrain shading plus fine noise, as a photo atlas has (PNG, Pillow's default level)."""
    path = run_dir / TEXTURE_RELPATH
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    image = np.empty((size, size, 3), dtype=np.uint8)
    lin = np.linspace(0.0, 1.0, size, dtype=np.float32)
    for start in range(0, size, 512):  # in bands: bounded memory at 8192 x 8192
        zs = lin[start : start + 512, None]
        height = terrain_height(lin[None, :], zs).astype(np.float32)
        base = np.stack([0.35 + height * 2.0, 0.45 + height * 1.2, 0.25 + height * 0.6], axis=-1)
        noise = rng.normal(0.0, 0.03, size=base.shape).astype(np.float32)
        image[start : start + 512] = np.clip((base + noise) * 255, 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path, format="PNG")


def write_pointcloud(run_dir: Path, points: int, block: int = 500_000) -> None:
    """An ASCII PLY of points scattered over the terrain with colour, written in blocks."""
    path = run_dir / POINTCLOUD_RELPATH
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    with open(path, "w") as out:
        out.write(
            "ply\nformat ascii 1.0\ncomment generated (bench/rightsize_data.py)\n"
            f"element vertex {points}\nproperty float x\nproperty float y\nproperty float z\n"
            "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
        )
        for start in range(0, points, block):
            n = min(block, points - start)
            xz = rng.uniform(0.0, 1.0, size=(n, 2))
            y = terrain_height(xz[:, 0], xz[:, 1]) + rng.normal(0, 0.002, n)
            colour = np.clip(np.stack([0.35 + y * 2.0, 0.45 + y * 1.2, 0.25 + y * 0.6], 1) * 255, 0, 255)
            rows = np.empty((n, 6))
            rows[:, 0], rows[:, 1], rows[:, 2] = xz[:, 0] * 100 - 50, y * 100, xz[:, 1] * 100 - 50
            rows[:, 3:] = colour.round()
            out.writelines(format_rows("%.6f %.6f %.6f %d %d %d\n", rows))


def make_results(run_dir: Path, scale: str = "test") -> dict[str, int]:
    """Write the mesh, texture and point cloud of ``scale`` into ``run_dir``; returns their counts."""
    size = SCALES[scale]
    faces = write_mesh(run_dir, size.grid)
    write_texture(run_dir, size.texture)
    write_pointcloud(run_dir, size.points)
    return {"faces": faces, "pixels": size.texture * size.texture, "points": size.points}


if __name__ == "__main__":
    import argparse
    import time

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--scale", choices=sorted(SCALES), default="bench")
    args = parser.parse_args()
    began = time.perf_counter()
    print(make_results(args.run_dir, args.scale), f"{time.perf_counter() - began:.1f} s")
