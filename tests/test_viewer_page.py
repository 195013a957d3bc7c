"""The 3D viewer page (``/viewer``) in headless Chromium with software WebGL (SwiftShader), against the real
API and object storage: a published job's mesh tileset and COPC point cloud streamed through the file route.

What a person sees is checked from the outside: the canvas draws the model where its box is on screen, the
first view fetches the tileset, its root tile, the COPC header and hierarchy and its top nodes only (bytes
counted by the browser's own network log and cross-checked with the page's counters), and zooming in fetches
deeper tiles and nodes. ``E2E3D_SCREENSHOTS=docs/viewer pytest tests/test_viewer_page.py`` writes the README's
screenshot, ``docs/viewer/viewer.png``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e3d_provider.hooks.metadata import MetadataHook
from e2e3d_provider.hooks.storage import StorageHook
from e2e3d_provider.lifecycle.results.publish import publish_run
from tests.helpers import ROLES, token, write_files

pytestmark = pytest.mark.slow

STAMP = "20261205T000000Z"


def sign_in(driver, api: str) -> None:
    """The UI's login cookie on the API's origin, for a viewer."""
    driver.get(f"{api}/api/health")
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
        f"{api}/api/job/{unique_id}/files/logs/reconstruct.log",
    )
    assert got[0] == 206, got
    assert got[1] is True and got[2].endswith(f"/output/{unique_id}/logs/reconstruct.log"), got
    assert got[3].encode() == log[1000:2000]
