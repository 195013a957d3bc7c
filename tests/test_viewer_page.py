"""The 3D viewer page (``/viewer``) in headless Chromium with software WebGL (SwiftShader), against the real
API and object storage: a published job's mesh tileset and COPC point cloud streamed through the file route.

What a person sees is checked from the outside: the canvas draws the model where its box is on screen, the
first view fetches the tileset, its root tile, the COPC header and hierarchy and its top nodes only (bytes
counted by the browser's own network log and cross-checked with the page's counters), and zooming in fetches
deeper tiles and nodes. ``E2E3D_SCREENSHOTS=docs/viewer pytest tests/test_viewer_page.py`` writes the README's
screenshot, ``docs/viewer/viewer.png``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.results.publish import publish_run
from tests.helpers import REPO, ROLES, token, write_files

pytestmark = pytest.mark.slow

STAMP = "20261205T000000Z"
SCREENSHOTS_ENV = "E2E3D_SCREENSHOTS"
DAG_ID = "e2e3d_reconstruction"
#: a tile's run-relative path names its depth: mesh/tiles/<stem>/<depth>/<i>_<j>[_<k>].glb
TILE_DEPTH = re.compile(r"/files/mesh/tiles/[^/]+/(\d+)/[^/]+\.glb$")


def sign_in(driver, api: str) -> None:
    """The UI's login cookie on the API's origin, for a viewer."""
    driver.get(f"{api}/api/v1/health")
    driver.add_cookie({"name": "_token", "value": token("viewer", ROLES["viewer"]), "path": "/"})


def test_the_browser_draws_with_webgl2(webgl_browser) -> None:
    """SwiftShader's WebGL 2 in headless Chromium: a context, and a clear colour read back from it."""
    webgl_browser.get("about:blank")
    pixel = webgl_browser.execute_script("""
        const gl = document.createElement('canvas').getContext('webgl2');
        if (!gl) return null;
        gl.clearColor(1, 0.5, 0, 1); gl.clear(gl.COLOR_BUFFER_BIT);
        const p = new Uint8Array(4); gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, p);
        return [gl.getParameter(gl.VERSION), gl.getParameter(gl.RENDERER), Array.from(p)];""")
    assert pixel is not None, "no WebGL 2 context: the browser's flags must enable SwiftShader"
    version, _renderer, rgba = pixel
    assert version.startswith("WebGL 2.0") and rgba == [255, 128, 0, 255], pixel


def test_a_page_reads_a_range_of_a_published_file_through_the_route(
    webgl_browser, api: str, storage: StorageHook, metadata: MetadataHook, tmp_path: Path, unique_id: str
) -> None:
    """A page on the API's origin fetches the file route with a Range header: the browser follows the 307 to
    object storage (another origin: CORS) and hands the page the 206 and the bytes."""
    log = b"".join(b"line %06d\n" % i for i in range(5000))
    write_files(tmp_path / "run", {"logs/reconstruct.log": log})
    publish_run(storage, tmp_path / "run", unique_id, STAMP, "output")
    metadata.record_job(unique_id, STAMP, "ds1", "running")
    metadata.record_job(unique_id, STAMP, "ds1", "succeeded")
    sign_in(webgl_browser, api)
    got = webgl_browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        fetch(arguments[0], {headers: {Range: 'bytes=1000-1999'}})
          .then(async (r) => done([r.status, r.redirected, r.url.split('?')[0], await r.text()]))
          .catch((e) => done(['error', String(e)]));""",
        f"{api}/api/v1/jobs/{unique_id}/files/logs/reconstruct.log",
    )
    assert got[0] == 206, got
    assert got[1] is True and got[2].endswith(f"/output/{unique_id}/logs/reconstruct.log"), got
    assert got[3].encode() == log[1000:2000]


# ---- the viewer on a published job ----


@pytest.fixture
def viewer_job(storage: StorageHook, metadata: MetadataHook, tmp_path: Path, unique_id: str) -> dict:
    """A job as the lifecycle publishes it: the test-scale results right-sized (a mesh tileset split down to
    the original, a COPC point cloud) and published under its manifest and SUCCESS. Sized for the small test
    data: tiles of a few hundred faces, so its mesh (3,042 faces) still splits over a quadtree; two LODs (1/2,
    1/4), so the root's measured error is, relative to the model, of the order of the bench model's coarsest
    level (0.017 of the diagonal here, 0.006 there) and not that of a 158-face caricature of a noisy terrain
    (0.18), which would be refined at first sight; the test scale's terrain sampled by 300,000 points (not
    20,000) and COPC nodes that stop splitting at 1,000 points, so the octree has four levels (103 nodes), one
    more than a 1280 px view of the whole model needs for its points to touch (20,000 points make three, all
    wanted at first sight: nothing left for zooming in to fetch)."""
    from bench.rightsize_data import make_results, write_pointcloud
    from e2e3d_provider.core.variants import RightSizeRecord
    from e2e3d_provider.lifecycle.results.rightsize import right_size_run
    from e2e3d_provider.rightsize.policy import RightSizePolicy

    run = tmp_path / "run"
    make_results(run, "test")
    write_pointcloud(run, 300_000)
    policy = RightSizePolicy(
        mesh_error_samples=5_000,
        mesh_lod_ratios=(0.5, 0.25),
        tile_faces=400,
        tile_texture_size=256,
        copc_node_points=1_000,
    )
    right_size_run(run, policy)
    publish_run(storage, run, unique_id, STAMP, "output")
    run_id = f"manual__{unique_id}"  # the DAG run that owns the job, as prepare records it
    metadata.record_job(unique_id, STAMP, "ds1", "running", statistics={"dag_id": DAG_ID, "dag_run_id": run_id})
    metadata.record_job(unique_id, STAMP, "ds1", "succeeded")
    (copc,) = [v for v in RightSizeRecord.read(run).variants if v.figures.get("format") == "copc"]
    return {"job_id": unique_id, "run_id": run_id, "copc_depth": copc.figures["depth"]}


def open_viewer(driver, api: str, query: str) -> dict:
    """Open the viewer as a signed-in viewer and wait until it has loaded what the camera wants."""
    sign_in(driver, api)
    driver.get_log("performance")  # the network log from here on
    driver.get_log("browser")
    driver.get(f"{api}/viewer?{query}")
    return wait_idle(driver)


def wait_state(driver, *states: str) -> str:
    """Wait until ``body[data-state]`` is one of ``states``; which one."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 180, poll_frequency=0.2).until(
        lambda d: (state := d.execute_script("return document.body.dataset.state")) in states and state
    )


def wait_idle(driver) -> dict:
    """Wait for ``body[data-state]`` idle (nothing loading, nothing more wanted); the page's counters then."""
    wait_state(driver, "idle", "error")
    state = driver.execute_script(
        "return {state: document.body.dataset.state, error: document.getElementById('error').textContent,"
        " fetched: e2e3dViewer.fetched, tiles: e2e3dViewer.tiles, nodes: e2e3dViewer.nodes,"
        " box: e2e3dViewer.rootBoxOnScreen(), background: e2e3dViewer.background, dpr: devicePixelRatio}"
    )
    assert state["state"] == "idle", state["error"]
    return state


def file_requests(driver) -> list[dict]:
    """The job-file requests the browser made since the last call, from DevTools' network events: the route's
    URL, the HTTP status of each hop (the route's 307, then object storage's answer) and the bytes received
    on the wire for the whole request, headers and the redirect hop included (``encodedDataLength``)."""
    requests: dict[str, dict] = {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        method, params = message["method"], message.get("params", {})
        if method == "Network.requestWillBeSent":
            request = requests.setdefault(
                params["requestId"], {"url": params["request"]["url"], "hops": [], "bytes": 0}
            )
            if "redirectResponse" in params:
                request["hops"].append(params["redirectResponse"]["status"])
                request["bytes"] += params["redirectResponse"]["encodedDataLength"]
        elif method == "Network.responseReceived" and params["requestId"] in requests:
            requests[params["requestId"]]["hops"].append(params["response"]["status"])
        elif method == "Network.loadingFinished" and params["requestId"] in requests:
            requests[params["requestId"]]["bytes"] += params["encodedDataLength"]
            requests[params["requestId"]]["done"] = True
    return [r for r in requests.values() if "/files/" in r["url"]]


def cross_checked(page_fetched: list[dict], network: list[dict]) -> int:
    """The page's own counts against the browser's: the same requests, each answered through the route's
    redirect; per file, the bytes on the wire at least the distinct bytes the page received (the browser's cache
    may answer a range it already holds, as it does for COPC nodes inside the first 64 kB the reader asked for)
    and at most the bodies plus a few kB of headers per request. The bytes on the wire, in total."""
    assert sorted(r["url"] for r in network) == sorted(f["url"] for f in page_fetched)
    for request in network:
        assert request.get("done") and request["hops"][0] == 307 and request["hops"][-1] in (200, 206), request
    for url in {f["url"] for f in page_fetched}:
        mine = [f for f in page_fetched if f["url"] == url]
        starts = [int(f["range"].removeprefix("bytes=").split("-")[0]) if f["range"] else 0 for f in mine]
        spans = sorted((start, start + f["bytes"]) for start, f in zip(starts, mine, strict=True))
        distinct, reached = 0, 0
        for begin, end in spans:
            distinct += max(0, end - max(begin, reached))
            reached = max(reached, end)
        wire = sum(r["bytes"] for r in network if r["url"] == url)
        assert distinct <= wire <= sum(f["bytes"] for f in mine) + 4000 * len(mine), (url, distinct, wire)
    return sum(r["bytes"] for r in network)


def drawn_fraction(png: bytes, box: dict, background: str, dpr: float) -> tuple[float, float]:
    """Of the screenshot's pixels inside the model's box on screen, the fraction that is not the background;
    and the same outside the box (below the page's header)."""
    from io import BytesIO

    import numpy as np
    from PIL import Image

    image = np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(int)
    bg = np.array([int(background[i : i + 2], 16) for i in (0, 2, 4)])
    drawn = np.abs(image - bg).sum(axis=2) > 24
    left, right = int(box["left"] * dpr), int(box["right"] * dpr)
    top, bottom = int(box["top"] * dpr), int(box["bottom"] * dpr)
    inside = np.zeros_like(drawn)
    inside[top:bottom, left:right] = True
    below_header = np.zeros_like(drawn)
    below_header[top:, :] = True  # the box's top is below the header on a framed view
    return float(drawn[inside].mean()), float(drawn[below_header & ~inside].mean())


def test_the_viewer_streams_a_jobs_tileset_and_point_cloud_with_level_of_detail(
    webgl_browser, api: str, viewer_job: dict, tmp_path: Path, record_property
) -> None:
    driver = webgl_browser
    first = open_viewer(driver, api, f"job={viewer_job['job_id']}&check=1")
    network = file_requests(driver)

    # the model is drawn where its box is on screen
    box = first["box"]
    assert box["right"] - box["left"] > 100 and box["bottom"] - box["top"] > 100, box
    png = driver.get_screenshot_as_png()
    inside, outside = drawn_fraction(png, box, first["background"], first["dpr"])
    assert inside > 0.2 and outside < 0.02, (inside, outside, box)  # the model, and only there

    # the first view: the tileset, its root tile(s), the COPC header + hierarchy and its top nodes
    urls = [f["url"].split("/files/", 1)[1] for f in first["fetched"]]
    tileset = next(u for u in urls if u.endswith("tileset.json"))
    tile_depths = [int(TILE_DEPTH.search(u).group(1)) for u in first["tiles"]]
    assert tile_depths and set(tile_depths) == {0}, first["tiles"]  # the root tile(s) only
    assert {u for u in urls if u.endswith(".glb")} == {u.split("/files/", 1)[1] for u in first["tiles"]}
    copc = [f for f in first["fetched"] if f["url"].endswith(".copc.laz")]
    assert copc[0]["range"] == "bytes=0-65535" and all(f["status"] == 206 for f in copc)  # header + VLRs
    node_depths = [int(k.split("-")[0]) for k in first["nodes"]]
    assert 0 in node_depths and max(node_depths) < viewer_job["copc_depth"]  # the top of the octree only
    first_bytes = cross_checked(first["fetched"], network)
    bodies = sum(f["bytes"] for f in first["fetched"])
    record_property("first_view_bytes", first_bytes)
    print(
        f"first view: {len(network)} requests, {first_bytes:,} bytes on the wire ({bodies:,} in bodies): {tileset}, "
        f"{len(first['tiles'])} tiles of depth 0, {len(copc)} COPC ranges, {len(first['nodes'])} nodes of depth "
        f"<= {max(node_depths)}"
    )

    screenshot(driver, "viewer", tmp_path)

    # closer: deeper tiles and deeper nodes, fetched through the route too
    driver.execute_script("e2e3dViewer.zoom(0.15)")
    zoomed = wait_idle(driver)
    network = file_requests(driver)
    new = zoomed["fetched"][len(first["fetched"]) :]
    assert new and cross_checked(new, network) > 0
    deeper_tiles = [int(TILE_DEPTH.search(u).group(1)) for u in zoomed["tiles"][len(first["tiles"]) :]]
    assert deeper_tiles and max(deeper_tiles) >= 1, zoomed["tiles"]
    deeper_nodes = [int(k.split("-")[0]) for k in zoomed["nodes"][len(first["nodes"]) :]]
    assert deeper_nodes and max(deeper_nodes) > max(node_depths), zoomed["nodes"]

    log = driver.get_log("browser")
    assert not [e for e in log if "TilesetValidationPlugin" in e["message"]], log
    assert not [e for e in log if e["level"] == "SEVERE"], log


@pytest.mark.one_server  # the job list and the DAG run's job come from PostgreSQL: one S3 lane is enough
def test_the_viewer_lists_jobs_and_opens_a_dag_runs_job(webgl_browser, api: str, viewer_job: dict) -> None:
    """Without a job the page lists the succeeded ones, each a link to its view; the UI's "3D view" tab and
    "View" extra link open it by the DAG run's ids, and the page finds the run's job."""
    from selenium.webdriver.common.by import By

    driver = webgl_browser
    open_viewer(driver, api, "")
    links = {a.text: a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "#jobs a")}
    assert links[viewer_job["job_id"]] == f"{api}/viewer?job={viewer_job['job_id']}", links
    page = open_viewer(driver, api, f"dag_id={DAG_ID}&run_id={viewer_job['run_id']}")
    assert viewer_job["job_id"] in driver.find_element(By.ID, "title").text
    assert page["tiles"] and page["nodes"]
    driver.get(f"{api}/viewer?dag_id={DAG_ID}&run_id=manual__no-such-run")
    wait_state(driver, "error")
    assert "no job is recorded for DAG run" in driver.find_element(By.ID, "error").text


def screenshot(driver, name: str, tmp_path: Path) -> None:
    """The page as it is; copied to $E2E3D_SCREENSHOTS (relative to the repo) when set, as the dashboard's are."""
    shot = tmp_path / f"{name}.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    target = os.environ.get(SCREENSHOTS_ENV)
    if target:
        from PIL import Image

        out = REPO / target / shot.name
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(shot) as image:
            image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out)
        try:
            import oxipng

            oxipng.optimize(out, level=4, strip=oxipng.StripChunks.safe())
        except ImportError:
            pass
