"""Point clouds as COPC and LAZ (``e2e3d_provider.rightsize.copc``), checked by independent readers: laspy's
``CopcReader`` (bounds and level queries against a numpy selection of the input), copclib's ``FileReader``
(its spatial validation, each node's points against the node's voxel), laspy for the LAZ; a cloud over
``copc_max_points`` refused with nothing written; and the COPC published by the lifecycle read through the
results API's file route by HTTP range requests, as a viewer streams it."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import copclib
import httpx
import laspy
import numpy as np
import pytest

from bench.rightsize_data import write_pointcloud
from e2e3d_provider.core.layout import VARIANTS_NAME
from e2e3d_provider.core.variants import RightSizeRecord
from e2e3d_provider.exceptions import RightSizeInputError
from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.results.publish import publish_run
from e2e3d_provider.lifecycle.results.rightsize import right_size_run
from e2e3d_provider.rightsize import copc
from e2e3d_provider.rightsize import pointcloud as clouds
from e2e3d_provider.rightsize.policy import RightSizePolicy
from tests.helpers import as_user, digests

STAMP = "20261205T080000Z"
PLY = "pointcloud/pointcloud.ply"
COPC, LAZ = "pointcloud/web/pointcloud.copc.laz", "pointcloud/lod0/pointcloud.laz"
#: small nodes, so 20,000 points make an octree of three levels (the root keeps 14,845: one a cell)
NODE_POINTS = 200
POLICY = RightSizePolicy(copc_node_points=NODE_POINTS, pointcloud_lod_ratios=(0.1,), mesh_seconds=120)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory holding only a coloured 20,000-point ASCII PLY (bench/rightsize_data.py), made once."""
    root = tmp_path_factory.mktemp("cloud")
    write_pointcloud(root, 20_000)
    return root


@pytest.fixture(scope="module")
def right_sized(cloud: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cloud right-sized by the lifecycle's step (COPC and LAZ in the bounded child)."""
    run = tmp_path_factory.mktemp("run") / "run"
    shutil.copytree(cloud, run)
    right_size_run(run, POLICY)
    return run


def ply_points(path: Path) -> np.ndarray:
    """The PLY's vertex rows (an independent parse would add nothing: the PLY reader is tested elsewhere)."""
    header = clouds.read_header(path)
    return np.concatenate(list(clouds.iter_points(path, header)))


def quantized(points: np.ndarray, header: laspy.LasHeader) -> np.ndarray:
    """(N, 3) LAS integers of PLY rows, at the scale and offset the file's header states."""
    xyz = np.column_stack([points["x"], points["y"], points["z"]]).astype(np.float64)
    return np.rint((xyz - header.offsets) / header.scales).astype(np.int64)


def ints_of(points: laspy.ScaleAwarePointRecord) -> np.ndarray:
    return np.column_stack([np.asarray(points.X), np.asarray(points.Y), np.asarray(points.Z)]).astype(np.int64)


def sorted_rows(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort(rows.T[::-1])]


def test_the_lifecycle_records_a_copc_to_stream_and_a_laz_to_download(right_sized: Path) -> None:
    record = RightSizeRecord.read(right_sized)
    assert record is not None
    variants = {v.path: v for v in record.variants}
    stream, laz = variants[COPC], variants[LAZ]
    assert (stream.role, stream.level, stream.source) == ("stream", None, PLY)
    assert (laz.role, laz.level, laz.source) == ("lod", 0, PLY)
    assert set(stream.figures) == {"format", "points", "nodes", "depth", "spacing", "cube", "bytes"}
    assert set(laz.figures) == {"format", "points", "scale", "bytes"}
    assert stream.figures["format"] == "copc" and laz.figures["format"] == "laz"
    assert stream.figures["points"] == laz.figures["points"] == 20_000
    assert stream.figures["bytes"] == (right_sized / COPC).stat().st_size
    assert laz.figures["bytes"] == (right_sized / LAZ).stat().st_size
    with laspy.CopcReader.open(right_sized / COPC) as reader:
        info = reader.copc_info
        assert stream.figures["cube"] == [*info.center.tolist(), info.halfsize]
        assert stream.figures["spacing"] == info.spacing == 2 * info.halfsize / 128
        assert stream.figures["nodes"] == len(reader.root_page.entries)
        assert stream.figures["depth"] == max(key.level for key in reader.root_page.entries) >= 2
    assert not list(right_sized.rglob("*.partial"))


def test_laspy_reads_every_point_and_a_bounds_query_returns_exactly_the_points_inside(
    cloud: Path, right_sized: Path
) -> None:
    source = ply_points(cloud / PLY)
    with laspy.CopcReader.open(right_sized / COPC) as reader:
        header = reader.header
        assert (str(header.version), header.point_format.id, header.point_count) == ("1.4", 7, 20_000)
        everything = reader.query()
        expected = quantized(source, header)
        assert np.array_equal(sorted_rows(ints_of(everything)), sorted_rows(expected))
        # colours: the PLY's 8 bits widened to LAS's 16 (x 257), on the same points
        got = np.column_stack([ints_of(everything), everything.red, everything.green, everything.blue])
        want = np.column_stack([expected, *(source[c].astype(np.int64) * 257 for c in ("red", "green", "blue"))])
        assert np.array_equal(sorted_rows(got.astype(np.int64)), sorted_rows(want))
        xyz = np.column_stack([source["x"], source["y"], source["z"]]).astype(np.float64)
        for mins, maxs in (([-20, 0, -30], [10, 100, 5]), ([0, 10, 0], [50, 12, 50]), ([-50, 0, 40], [-40, 50, 45])):
            bounds = laspy.copc.Bounds(np.array(mins, dtype=float), np.array(maxs, dtype=float))
            found = reader.query(bounds=bounds)
            # the points inside, as the file holds them (its coordinates are the PLY's, within half a scale)
            stored = ints_of(everything) * header.scales + header.offsets
            inside = np.all((stored >= bounds.mins) & (stored <= bounds.maxs), axis=1)
            assert 0 < inside.sum() < 20_000
            assert np.array_equal(sorted_rows(ints_of(found)), sorted_rows(ints_of(everything)[inside]))
            near = np.all((xyz >= bounds.mins + 1e-5) & (xyz <= bounds.maxs - 1e-5), axis=1)
            assert (
                near.sum() <= len(found) <= np.all((xyz >= bounds.mins - 1e-5) & (xyz <= bounds.maxs + 1e-5), 1).sum()
            )
        root = next(e for e in reader.root_page.entries.values() if e.key.level == 0)
        assert len(reader.query(level=0)) == root.point_count
        assert len(reader.query(level=range(0, 2))) == sum(
            e.point_count for e in reader.root_page.entries.values() if e.key.level < 2
        )


def test_copclib_finds_every_point_inside_its_node_and_nodes_sample_one_point_per_cell(right_sized: Path) -> None:
    reader = copclib.FileReader(str(right_sized / COPC))
    assert reader.ValidateSpatialBounds(False)
    info = reader.copc_config.copc_info
    low = np.array([info.center_x, info.center_y, info.center_z]) - info.halfsize
    nodes = reader.GetAllNodes()
    keys = {(n.key.d, n.key.x, n.key.y, n.key.z) for n in nodes}
    assert sum(n.point_count for n in nodes) == reader.copc_config.las_header.point_count == 20_000
    for node in nodes:
        d, x, y, z = node.key.d, node.key.x, node.key.y, node.key.z
        if d:
            assert (d - 1, x // 2, y // 2, z // 2) in keys  # every node hangs off its parent
        size = 2 * info.halfsize / 2**d
        points = reader.GetPoints(node)
        xyz = np.column_stack([points.x, points.y, points.z])
        assert len(xyz) == node.point_count > 0
        lo = low + np.array([x, y, z]) * size
        assert np.all(xyz >= lo) and np.all(xyz <= lo + size), node.key  # the voxel, as the COPC info says
        children = [k for k in keys if k[0] == d + 1 and (k[1] // 2, k[2] // 2, k[3] // 2) == (x, y, z)]
        if children:  # an inner node: one point per cell of its 128^3 grid
            cells = np.minimum(np.floor((xyz - lo) / (size / 128)), 127).astype(np.int64)
            assert len(np.unique(cells, axis=0)) == len(cells), node.key
        else:  # a leaf: what was left under it, at most copc_node_points
            assert node.point_count <= NODE_POINTS, node.key


def test_the_laz_holds_the_plys_points_within_the_scale(cloud: Path, right_sized: Path, tmp_path: Path) -> None:
    source = ply_points(cloud / PLY)
    xyz = np.column_stack([source["x"], source["y"], source["z"]]).astype(np.float64)
    las = laspy.read(right_sized / LAZ)
    assert (str(las.header.version), las.header.point_format.id, las.header.point_count) == ("1.4", 7, 20_000)
    scale = las.header.scales[0]
    assert scale <= 1e-6 and np.allclose(las.header.mins, xyz.min(axis=0), atol=scale)
    assert np.allclose(las.header.maxs, xyz.max(axis=0), atol=scale)
    got = np.column_stack([ints_of(las.points), las.red, las.green, las.blue]).astype(np.int64)
    want = np.column_stack(
        [quantized(source, las.header), *(source[c].astype(np.int64) * 257 for c in ("red", "green", "blue"))]
    )
    assert np.array_equal(sorted_rows(got), sorted_rows(want))  # the same points (in Morton order)
    coordinates = np.column_stack([las.x, las.y, las.z])
    order_las, order_ply = np.lexsort(got.T[::-1]), np.lexsort(want.T[::-1])
    assert np.abs(coordinates[order_las] - xyz[order_ply]).max() <= scale / 2 + 1e-9
    # without COPC the LAZ is streamed from the PLY, point for point in its order
    binary = right_sized / "pointcloud/lod0/pointcloud.ply"
    figures = copc.write_laz(binary, tmp_path / "streamed.laz", rows=777)
    streamed = laspy.read(tmp_path / "streamed.laz")
    assert figures["points"] == len(streamed.points) == 20_000 and figures["scale"] == scale
    assert np.array_equal(ints_of(streamed.points), quantized(source, streamed.header))
    assert np.array_equal(np.asarray(streamed.red), source["red"].astype(np.int64) * 257)


def test_chunk_size_does_not_change_the_copc(right_sized: Path, tmp_path: Path) -> None:
    binary = right_sized / "pointcloud/lod0/pointcloud.ply"
    one = copc.write_copc(binary, tmp_path / "one.copc.laz", node_points=NODE_POINTS, max_points=10**6, rows=10**6)
    many = copc.write_copc(binary, tmp_path / "many.copc.laz", node_points=NODE_POINTS, max_points=10**6, rows=999)
    assert one == many
    assert (tmp_path / "one.copc.laz").read_bytes() == (tmp_path / "many.copc.laz").read_bytes()
    assert (tmp_path / "one.copc.laz").read_bytes() == (right_sized / COPC).read_bytes()  # deterministic


def test_a_cloud_over_copc_max_points_is_refused_clearly_and_leaves_nothing(cloud: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(cloud, run)
    before = digests(run)
    policy = RightSizePolicy(copc_max_points=19_999, pointcloud_lod_ratios=(0.1,))
    with pytest.raises(RightSizeInputError, match=r"20,000 points, more than copc_max_points = 19,999"):
        right_size_run(run, policy)
    assert digests(run) == before  # no variant, no record, no partial file
    # the child refuses too (a direct call), before writing anything
    binary = tmp_path / "binary.ply"
    clouds.to_binary(cloud / PLY, binary)
    out = tmp_path / "out"
    with pytest.raises(RightSizeInputError, match="copc_max_points"):
        copc.write_arrays(
            {}, source=str(binary), copc=str(out / "c.copc.laz"), laz=str(out / "c.laz"), node_points=10, max_points=5
        )
    assert not out.exists()
    # with copc off, the same cloud gets its LAZ and no COPC
    record = right_size_run(run, RightSizePolicy(copc=False, copc_max_points=1, pointcloud_lod_ratios=(0.1,)))
    assert LAZ in {v.path for v in record.variants} and not (run / COPC).exists()
    assert laspy.read(run / LAZ).header.point_count == 20_000


def test_a_cloud_without_colours_is_point_format_6(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    points = np.empty(5_000, dtype=[("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("nx", "<f4")])
    points["x"], points["y"], points["z"] = (rng.random((3, 5_000)) * [[1000], [10], [200]]) + [[4.5e5], [0], [5e6]]
    points["nx"] = 1
    ply = tmp_path / "plain.ply"
    header = "ply\nformat binary_little_endian 1.0\nelement vertex 5000\n"
    header += "property double x\nproperty double y\nproperty double z\nproperty float nx\nend_header\n"
    ply.write_bytes(header.encode() + points.tobytes())
    figures = copc.write_copc(
        ply, tmp_path / "plain.copc.laz", node_points=500, max_points=10**6, laz=tmp_path / "p.laz"
    )
    assert figures["point_format"] == figures["laz"]["point_format"] == 6
    with laspy.CopcReader.open(tmp_path / "plain.copc.laz") as reader:
        assert reader.header.point_format.id == 6 and reader.header.point_count == 5_000
        found = reader.query()
        xyz = np.column_stack([points["x"], points["y"], points["z"]])
        assert np.array_equal(sorted_rows(ints_of(found)), sorted_rows(quantized(points, reader.header)))
        assert reader.header.scales[0] <= 1e-6  # doubles far from the origin keep a micrometre
        assert np.abs(np.sort(found.x) - np.sort(xyz[:, 0])).max() <= reader.header.scales[0] / 2 + 1e-9
    assert copclib.FileReader(str(tmp_path / "plain.copc.laz")).ValidateSpatialBounds(False)
    assert laspy.read(tmp_path / "p.laz").header.point_format.id == 6


class RouteStream(io.RawIOBase):
    """A COPC file read through the results API's file route: each read is a GET with ``Authorization`` and
    ``Range`` to the route, which answers 307 to a pre-signed URL, fetched with the same ``Range`` (and no
    ``Authorization``: the signature is the credential there). Counts requests and bytes."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url, self.headers, self.position = url, headers, 0
        self.client = httpx.Client(timeout=30)
        head = self.client.head(url, headers=headers, follow_redirects=True)
        assert head.status_code == 200, head.text
        self.size = int(head.headers["content-length"])
        self.requests, self.fetched = 0, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.position = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence] + offset
        return self.position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self.size - self.position)
        if want <= 0:
            return 0
        span = {"Range": f"bytes={self.position}-{self.position + want - 1}"}
        answer = self.client.get(self.url, headers={**self.headers, **span})
        assert answer.status_code == 307, answer.text
        location = answer.headers["location"]
        part = self.client.get(location, headers=span)
        assert part.status_code == 206, part.text
        assert part.headers["content-range"].startswith(f"bytes {self.position}-{self.position + want - 1}/")
        buffer[:want] = part.content
        self.position += want
        self.requests += 1
        self.fetched += want
        return want

    def close(self) -> None:
        self.client.close()
        super().close()


@pytest.fixture
def published(right_sized: Path, tmp_path: Path, storage: StorageHook, metadata: MetadataHook, unique_id: str) -> Path:
    run = tmp_path / "run"
    shutil.copytree(right_sized, run)
    assert (run / VARIANTS_NAME).is_file()
    publish_run(storage, run, unique_id, STAMP, "output")
    metadata.record_job(unique_id, STAMP, "ds1", "running")
    metadata.record_job(unique_id, STAMP, "ds1", "succeeded")
    return run


def test_laspy_streams_the_published_copc_through_the_file_route_by_range_requests(
    api: str, unique_id: str, published: Path
) -> None:
    url = f"{api}/api/v1/jobs/{unique_id}/files/{COPC}"
    size = (published / COPC).stat().st_size
    stream = RouteStream(url, as_user("viewer"))
    with laspy.CopcReader(stream, close_fd=False) as reader, laspy.CopcReader.open(published / COPC) as local:
        root = reader.query(level=0)
        assert len(root) == len(local.query(level=0)) > 0
        # the header with its VLRs, the hierarchy page and the root node: not the other nodes
        entries = local.root_page.entries.values()
        root_bytes = next(e.byte_size for e in entries if e.key.level == 0)
        others = sum(e.byte_size for e in entries if e.key.level > 0)
        top = local.header.offset_to_point_data + local.copc_info.hierarchy_root_size + root_bytes
        print(f"first query: {stream.requests} range requests, {stream.fetched:,} bytes; {top:,} above; file {size:,}")
        assert top <= stream.fetched <= top + 1024 and stream.fetched + others > size  # (+ EVLR headers)
        first = stream.fetched
        assert np.array_equal(ints_of(root), ints_of(local.query(level=0)))
        bounds = laspy.copc.Bounds(np.array([0.0, 0, 0]), np.array([25.0, 100, 25]))
        inside = reader.query(bounds=bounds)
        assert np.array_equal(sorted_rows(ints_of(inside)), sorted_rows(ints_of(local.query(bounds=bounds))))
        assert 0 < len(inside) < 20_000
        assert stream.fetched > first  # the nodes the query needs, read on demand
    stream.close()
    # the route is authenticated like the rest of the API
    assert httpx.get(url, headers={"Range": "bytes=0-99"}).status_code in (401, 403)


def test_the_policy_checks_its_copc_settings() -> None:
    defaults = RightSizePolicy()
    assert (defaults.copc, defaults.copc_max_points, defaults.copc_node_points) == (True, 20_000_000, 100_000)
    for bad, message in (
        ({"copc": "yes"}, "copc must be true or false"),
        ({"copc_max_points": 0}, "copc_max_points must be a positive integer"),
        ({"copc_node_points": 2.5}, "copc_node_points must be a positive integer"),
    ):
        with pytest.raises(ValueError, match=message):
            RightSizePolicy.from_settings(bad)
    schema = RightSizePolicy.json_schema()["properties"]
    assert schema["copc"]["type"] == ["boolean", "null"] and schema["copc_node_points"]["minimum"] == 1
