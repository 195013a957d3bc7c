"""Right-sizing keeps to its bounds whatever the input (issue 28, item 7): every hostile file here is
real, made by the test, and refused with a :class:`RightSizeInputError` that names the limit, within
seconds, leaving the run directory as it was; small limits set through the policy keep each case fast.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.rightsize_data import make_results
from e2e3d_provider.core.layout import VARIANTS_NAME
from e2e3d_provider.exceptions import RightSizeInputError
from e2e3d_provider.lifecycle.results.rightsize import right_size_run
from e2e3d_provider.rightsize import mesh as meshes
from e2e3d_provider.rightsize import pointcloud as clouds
from e2e3d_provider.rightsize import scratch
from e2e3d_provider.rightsize import texture as textures
from e2e3d_provider.rightsize.policy import RightSizePolicy
from tests.helpers import digests

PLY_XYZ = "ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\nend_header\n"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    make_results(root, "tiny")  # 242 faces, 64 x 64 pixels, 500 points
    return root


@pytest.fixture
def run_dir(generated: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(generated, target)
    return target


def write_png(path: Path, width: int, height: int, depth: int, colour: int, rows: Iterable[bytes]) -> None:
    """A PNG written chunk by chunk (Pillow writes no 16-bit RGB, and no image it cannot hold in memory):
    ``rows`` are the scanlines without their filter byte, compressed as they come."""
    packer = zlib.compressobj(1)
    data = [packer.compress(b"\0" + row) for row in rows]  # filter type 0 on every row
    data.append(packer.flush())

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(data)) + chunk(b"IEND", b"")
    )


def _sixteen_bit(colour: int) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        channels = {2: 3, 6: 4}[colour]
        row = np.arange(64 * channels, dtype=">u2").tobytes()  # high bytes 0, low bytes count up
        write_png(run / "textures/texture.png", 64, 64, 16, colour, [row] * 64)

    return damage


def _decompression_bomb(run: Path) -> None:
    """A 100,000 x 100,000 PNG as the issue found it: its header and the first rows (all an image
    decoder reads before it allocates); Pillow's own bomb check refuses it on open."""
    write_png(run / "textures/texture.png", 100_000, 100_000, 8, 0, [bytes(100_000)] * 4)


def _nothing(run: Path) -> None:
    """The run as generated: the policy's limit alone refuses it."""


def _duplicate_ply_property(run: Path) -> None:
    (run / "pointcloud/pointcloud.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float y\n"
        "property float z\nend_header\n0 0 0 0\n"
    )


def _long_ply_row(run: Path) -> None:
    (run / "pointcloud/pointcloud.ply").write_text(PLY_XYZ + "0  0  0\n" + "1" * 5000 + "  1  1\n")


def _identical_faces(run: Path) -> None:
    """50,000 copies of one textured triangle: meshoptimizer, the error figures and Draco take over a
    minute on it (200,000 copies: past five minutes), in native code no Python timeout interrupts."""
    head = "v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\n"
    (run / "mesh/reconstructed_mesh.obj").write_text(head + "f 1/1 2/2 3/3\n" * 50_000)


@pytest.mark.parametrize(
    ("damage", "settings", "message"),
    [
        pytest.param(_sixteen_bit(2), {}, r"16 bits per channel \(RGB;16B\) is not supported", id="16-bit-rgb-png"),
        pytest.param(_sixteen_bit(6), {}, r"16 bits per channel \(RGBA;16B\) is not supported", id="16-bit-rgba-png"),
        pytest.param(_decompression_bomb, {}, r"png is too large to decode: .*10000000000 pixels", id="bomb-png"),
        pytest.param(_nothing, {"max_pixels": 4000}, r"64 x 64 = 4,096 pixels, more than max_pixels", id="pixels"),
        pytest.param(_duplicate_ply_property, {}, "property 'y' is declared more than once", id="ply-twice-y"),
        pytest.param(
            _long_ply_row, {"max_line_bytes": 1000}, "point row 1 is longer than max_line_bytes = 1,000", id="row"
        ),
        pytest.param(_nothing, {"max_faces": 200}, "has 242 f lines, more than max_faces = 200", id="faces"),
        pytest.param(_identical_faces, {"mesh_seconds": 1.0}, "stopped after mesh_seconds = 1 s", id="mesh-seconds"),
        pytest.param(  # less than the worker has mapped once its libraries are in: its first allocation fails
            _nothing, {"mesh_memory_bytes": 50 << 20}, "worker .+ within mesh_memory_bytes = 52,428", id="mesh-memory"
        ),
        pytest.param(
            _nothing, {"max_input_bytes": 10_000}, r"obj is [\d,]+ bytes, more than max_input_bytes", id="bytes"
        ),
    ],
)
def test_a_hostile_or_oversized_result_is_refused_within_its_bounds_and_leaves_the_run_as_it_was(
    run_dir: Path, damage: Callable[[Path], None], settings: dict, message: str
) -> None:
    damage(run_dir)
    before = digests(run_dir)
    policy = RightSizePolicy.from_settings({"mesh_error_samples": 2000}, settings)
    began = time.perf_counter()
    with pytest.raises(RightSizeInputError, match=message):
        right_size_run(run_dir, policy)
    assert time.perf_counter() - began < 20  # the identical faces alone took minutes unbounded
    assert digests(run_dir) == before  # no variant, no record, originals byte for byte
    assert not (run_dir / VARIANTS_NAME).exists()


def test_a_texture_is_checked_against_max_pixels_before_it_is_decoded(tmp_path: Path) -> None:
    """The issue's 24000 x 24000 PNG (1.7 MB of zeros) peaked at 10.7 GB: the module raised Pillow's
    decompression-bomb limit to 2^30 pixels for every image the process opened. Now Pillow's limit is
    left alone (it refuses 576 M pixels itself), and max_pixels (100 M by default) refuses what Pillow's
    would let through, from the header, in well under a second."""
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # importing right-sizing changes nothing for anyone else
    cases = [
        (24_000, 24_000, r"huge\.png is too large to decode: Image size \(576000000 pixels\) exceeds limit"),
        (12_000, 10_000, r"12000 x 10000 = 120,000,000 pixels, more than max_pixels = 100,000,000"),
    ]
    for width, height, refused in cases:
        path = tmp_path / "huge.png"
        write_png(path, width, height, 8, 0, (bytes(width) for _ in range(height)))
        assert path.stat().st_size < 3 << 20  # a few MB on disk, hundreds of MB decoded
        began = time.perf_counter()
        with pytest.raises(RightSizeInputError, match=refused), textures.open_texture(path):
            pass
        assert time.perf_counter() - began < 1
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((100, 120, 3), dtype=np.uint8)).save(small)
    with textures.open_texture(small, max_pixels=12_000) as image:  # the limit itself is allowed
        assert image.size == (120, 100)


def test_an_error_of_the_callers_own_work_is_not_called_an_unreadable_image(tmp_path: Path) -> None:
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(small)
    with pytest.raises(PermissionError, match="disk says no"), textures.open_texture(small):
        raise PermissionError("disk says no")


def test_the_operator_fails_a_decompression_bomb_once_instead_of_retrying_it(run_dir: Path, connections: dict) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from e2e3d_provider.operators.rightsize import RightSizeOperator

    _decompression_bomb(run_dir)
    operator = RightSizeOperator(task_id="right_size", run_dir=str(run_dir), settings={"mesh_error_samples": 1000})
    with pytest.raises(AirflowFailException, match=r"texture\.png is too large to decode"):
        operator.execute({})


@pytest.mark.timeout(30)
@pytest.mark.parametrize("max_line_bytes", [None, 64 << 20])
def test_an_ascii_ply_row_with_no_line_end_is_refused_not_read_forever(
    tmp_path: Path, max_line_bytes: int | None
) -> None:
    """A 24 MiB row and no newline looped forever (a 20 MiB one failed cleanly): the reader took the end
    of the file for the middle of a row once its buffer was a full block. With the default limit the row
    is too long; with a limit above it, the reader sees the end of the file and the row is not 3 numbers."""
    path = tmp_path / "cloud.ply"
    with open(path, "w") as out:
        out.write(PLY_XYZ.replace("vertex 2", "vertex 1"))
        out.write("1  " * (8 << 20))  # 24 MiB, double spaces: the general reader, not Arrow's
    limit = {} if max_line_bytes is None else {"max_line_bytes": max_line_bytes}
    expected = "longer than max_line_bytes = 65,536" if max_line_bytes is None else "where 3 were expected"
    began = time.perf_counter()
    with pytest.raises(RightSizeInputError, match=expected):
        clouds.to_binary(path, tmp_path / "out.ply", **limit)
    assert time.perf_counter() - began < 15


def test_ascii_rows_are_read_in_bounded_blocks_and_the_last_row_may_lack_its_line_end(tmp_path: Path) -> None:
    """Chunks are cut at whole rows whatever their length (rows longer than the reader's estimate do not
    make it hold more than a block or so), and the same points come out whatever the chunk size."""
    rng = np.random.default_rng(3)
    points = rng.uniform(-50, 50, size=(30_000, 3)).round(6)
    text = [[f"{value:.6f}" for value in point] for point in points]
    rows = "".join(f"{x}   {y}\t{z}{' ' * 40}\n" for x, y, z in text)  # ~80 bytes a row, where 48 are expected
    expected = np.array(text, dtype=np.float64).astype(np.float32)
    path = tmp_path / "cloud.ply"
    path.write_text(PLY_XYZ.replace("vertex 2", f"vertex {len(points)}") + rows.rstrip("\n"))
    header = clouds.read_header(path)
    for chunk_rows in (1000, 20_000, 500_000):  # 20,000 rows are more than the 1 MiB block holds
        with open(path, "rb") as handle:
            handle.seek(header.data_offset)
            chunks = list(clouds._ascii_chunks(handle, header, chunk_rows, path))
        assert max(len(c) for c in chunks) <= chunk_rows
        got = np.concatenate(chunks)
        assert np.array_equal(np.column_stack([got["x"], got["y"], got["z"]]), expected)
    path.write_text(PLY_XYZ + "0  0  0\n")
    with pytest.raises(RightSizeInputError, match="ends after 1 of 2 points"):
        list(clouds.iter_points(path, clouds.read_header(path)))


def test_single_spaced_ascii_reads_the_same_with_pyarrow_and_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyarrow is an optional accelerator (the ``arrow`` extra): an install without it reads the same
    single-spaced ASCII cloud through the numpy reader, to the value, and refuses the same bad row."""
    rng = np.random.default_rng(5)
    points = rng.uniform(-50, 50, size=(5_000, 3)).round(6)
    path = tmp_path / "cloud.ply"
    path.write_text(
        PLY_XYZ.replace("vertex 2", f"vertex {len(points)}")
        + "".join(f"{x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in points)
    )
    header = clouds.read_header(path)

    def read() -> np.ndarray:
        return np.concatenate(list(clouds.iter_points(path, header, rows=2_000)))

    assert clouds._arrow_installed()  # the dev install has it, so both readers run here
    with_arrow = read()
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what an install without the extra sees
    monkeypatch.setitem(sys.modules, "pyarrow.csv", None)
    assert not clouds._arrow_installed()
    without = read()
    assert without.dtype == with_arrow.dtype and np.array_equal(without, with_arrow)
    assert np.array_equal(without["x"], points[:, 0].astype(np.float32))
    path.write_text(PLY_XYZ + "0 0 0\n1 oops 2\n")
    with pytest.raises(RightSizeInputError, match="not a number"):
        list(clouds.iter_points(path, clouds.read_header(path)))


def test_a_mesh_over_max_faces_is_refused_before_its_lines_are_split(tmp_path: Path) -> None:
    path = tmp_path / "quads.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\n" + "f 1 2 3 4\n" * 60)  # 120 triangles
    assert len(meshes.read_obj(path, max_faces=120).faces) == 120
    with pytest.raises(RightSizeInputError, match="about 120 triangles, more than max_faces = 100"):
        meshes.read_obj(path, max_faces=100)
    path.write_text("v 0 0 0\n" * 400 + "f 1 2 3\n")
    with pytest.raises(RightSizeInputError, match=r"400 v lines, more than 3 x max_faces = 100"):
        meshes.read_obj(path, max_faces=100)


def test_the_mesh_chain_in_its_worker_gives_what_it_gives_in_process(generated: Path) -> None:
    full = meshes.read_obj(generated / "mesh/reconstructed_mesh.obj")
    chain = meshes.lod_chain(full, (0.5, 0.2), 2000)
    here = meshes.lod_chain_arrays(
        {"positions": full.positions, "faces": full.faces, "uvs": full.uvs}, [0.5, 0.2], 2000
    )
    assert [step.level for step in chain] == [0, 1, 2] and chain[0].mesh is full
    for step in chain:
        assert np.array_equal(step.samples, here[f"samples{step.level}"])
        assert [step.error["hausdorff"], step.error["mean_distance"]] == here[f"error{step.level}"].tolist()
        if step.level:
            assert np.array_equal(step.mesh.faces, here[f"faces{step.level}"])
            assert np.array_equal(step.mesh.positions, full.positions[here[f"used{step.level}"]])


def test_the_worker_runs_only_right_sizing_functions_and_reports_a_bug_as_a_bug() -> None:
    from e2e3d_provider.rightsize.worker import run_bounded

    with pytest.raises(ValueError, match=r"runs functions of e2e3d_provider\.rightsize"):
        run_bounded("os:system", {}, {}, seconds=5, memory_bytes=1 << 30, what="x")
    with pytest.raises(RuntimeError, match=r"(?s)worker failed \(exit 1\).*TypeError"):  # not an input error
        run_bounded(
            "e2e3d_provider.rightsize.mesh:lod_chain_arrays",
            {},
            {"nope": 1},
            seconds=30,
            memory_bytes=4 << 30,
            what="x",
        )


def test_the_worker_dies_with_the_process_that_started_it_and_its_folder_goes_at_the_next_call() -> None:
    """A worker whose parent is killed outright (SIGKILL leaves it no chance to stop its children) does not
    run on: Linux kills it (PR_SET_PDEATHSIG), once it has limited itself and started on the work. The folder
    with its input, which the killed parent could not remove, is removed by the next call's sweep (it stayed
    in TMPDIR for good before), while a folder a live process holds is kept."""
    from e2e3d_provider.rightsize.worker import run_bounded

    script = (  # the identical faces keep the worker busy for 20 s or more
        "import numpy as np\n"
        "from e2e3d_provider.rightsize.worker import run_bounded\n"
        "arrays = {'positions': np.eye(3), 'faces': np.tile([0, 1, 2], (50_000, 1)), 'uvs': np.eye(3)[:, :2]}\n"
        "options = {'ratios': [0.5], 'error_samples': 50_000}\n"
        "run_bounded('e2e3d_provider.rightsize.mesh:lod_chain_arrays', arrays, options, seconds=600,\n"
        "            memory_bytes=3 << 30, what='x')\n"
    )
    parent = subprocess.Popen([sys.executable, "-P", "-c", script])
    try:
        child, deadline = None, time.monotonic() + 30
        while time.monotonic() < deadline:  # the worker, past its start: its address space is limited
            found = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()
            with contextlib.suppress(OSError):
                if found and str(3 << 30) in Path(f"/proc/{found[0]}/limits").read_text():
                    child = int(found[0])
                    folder = Path(os.readlink(f"/proc/{child}/cwd"))  # the worker runs in its private folder
                    break
            time.sleep(0.05)
        assert child is not None, "the worker did not start"
    finally:
        parent.kill()
        parent.wait()
    assert folder.name.startswith(scratch.PREFIX) and (folder / "input.npz").exists()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
                break  # dead, not yet reaped by whoever adopted it
        time.sleep(0.05)
    else:
        if Path(f"/proc/{child}").exists():
            os.kill(child, signal.SIGKILL)
            pytest.fail(f"worker {child} outlived its parent")

    # the killed parent could not remove the worker's folder (its input arrays): the next call's sweep does
    assert folder.exists()
    long_ago = time.time() - 2 * scratch.GRACE_SECONDS
    with scratch.work_folder() as in_use:  # held by a live process: kept, however old
        for path in (folder, in_use):
            os.utime(path, (long_ago, long_ago))
        with pytest.raises(RuntimeError, match="worker failed"):  # any call sweeps first, whatever its outcome
            run_bounded(
                "e2e3d_provider.rightsize.mesh:lod_chain_arrays", {}, {"nope": 1}, seconds=60, memory_bytes=1 << 30,
                what="x",
            )  # fmt: skip
        assert in_use.exists() and not folder.exists()
    assert not in_use.exists()


def test_the_policy_takes_the_limits_and_refuses_nonsense() -> None:
    policy = RightSizePolicy.from_settings({"max_pixels": 10_000, "mesh_seconds": 2.5})
    assert (policy.max_pixels, policy.mesh_seconds) == (10_000, 2.5)
    defaults = RightSizePolicy()
    assert (defaults.max_pixels, defaults.max_faces, defaults.max_line_bytes) == (100_000_000, 5_000_000, 65_536)
    assert (defaults.max_input_bytes, defaults.mesh_seconds, defaults.mesh_memory_bytes) == (2 << 30, 300.0, 4 << 30)
    bad = [("max_pixels", 0), ("max_faces", "many"), ("max_line_bytes", 1.5), ("mesh_memory_bytes", True)]
    for key, value in [*bad, ("max_input_bytes", -1)]:
        with pytest.raises(ValueError, match=f"{key} must be a positive integer"):
            RightSizePolicy.from_settings({key: value})
    for value in (0, -1, float("inf"), "60"):
        with pytest.raises(ValueError, match="mesh_seconds must be a positive number"):
            RightSizePolicy.from_settings({"mesh_seconds": value})
