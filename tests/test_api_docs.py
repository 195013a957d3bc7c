"""The API's docs pages work offline: ``/e2e3d/docs`` (Swagger UI) and ``/e2e3d/redoc`` (ReDoc) load only
same-origin assets, which the package carries and the app serves, and render the API in headless Chromium.
The app is mounted under ``/e2e3d`` as the api-server mounts the plugin's app."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import serve

PREFIX = "/e2e3d"
PAGES = ("docs", "redoc")
#: what each asset must be served as
TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


@pytest.fixture(scope="module")
def mounted() -> Iterator[str]:
    """The plugin's app mounted under /e2e3d (the docs pages need no storage nor database)."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from e2e3d_provider.api.app import create_app

    url, server, thread = serve(Starlette(routes=[Mount(PREFIX, app=create_app())]))
    yield url
    server.should_exit = True
    thread.join(10)


def assets(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


@pytest.mark.parametrize("page", PAGES)
def test_the_docs_pages_load_only_same_origin_assets_the_app_serves(mounted: str, page: str) -> None:
    response = httpx.get(f"{mounted}{PREFIX}/{page}")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert not re.search(r"https?://", html), re.findall(r"https?://[^\s\"'<>]+", html)  # no CDN, no fonts, no icon
    found = assets(html)
    assert len(found) >= 2, found  # the script (and the stylesheet, for Swagger UI) and the icon
    for asset in found:
        assert asset.startswith(f"{PREFIX}/static/vendor/"), asset
        served = httpx.get(f"{mounted}{asset}")
        suffix = asset[asset.rfind(".") :]
        assert served.status_code == 200, asset
        assert served.headers["content-type"].split(";")[0] == TYPES[suffix], (asset, served.headers["content-type"])
        assert len(served.content) > 500, asset
    spec = re.search(r"""(?:url: '|spec-url=")([^'"]+)""", html)
    assert spec and spec.group(1) == f"{PREFIX}/openapi.json"
    schema = httpx.get(f"{mounted}{spec.group(1)}").json()
    assert schema["info"]["title"] == "E2E3D results API"


def test_static_files_are_only_the_package_s_pages_assets(mounted: str) -> None:
    for path in ("../app.py", "vendor/redoc.LICENSE", "vendor/nothing.js", "%2e%2e/app.py"):
        assert httpx.get(f"{mounted}{PREFIX}/static/{path}").status_code == 404, path


@pytest.mark.parametrize("page", PAGES)
def test_the_docs_pages_render_the_api_in_a_browser(mounted: str, browser, page: str) -> None:
    """Swagger UI and ReDoc draw the API's title and routes from the package's copies; every resource the
    browser fetched came from the api-server's origin (the pages' policy stops the rest: ReDoc's footer
    asks cdn.redoc.ly for its logo)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    shows = {"docs": ".swagger-ui .info .title", "redoc": "h1"}[page]

    def drawn(driver) -> bool:
        found = driver.find_elements(By.CSS_SELECTOR, shows)
        return bool(found) and "E2E3D results API" in found[0].text and "/api/v1/jobs/" in driver.page_source

    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(f"{mounted}{PREFIX}/{page}")
    WebDriverWait(browser, 60).until(drawn)
    asked = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    # what the policy blocked (Chromium logs each: "Loading the image '<url>' violates ... has been blocked")
    refused = " ".join(e["message"] for e in browser.get_log("browser") if e.get("source") == "security")
    outside = [url for url in asked if not url.startswith(mounted)]
    assert asked and all(url in refused for url in outside), (outside, refused)


def test_webassembly_is_served_as_application_wasm_so_a_page_compiles_it_streaming(
    mounted: str, browser, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The viewer's LAZ decoder is a .wasm file beside its bundle: served with the type
    ``WebAssembly.instantiateStreaming`` requires (a browser refuses any other), revalidated like the rest."""
    from e2e3d_provider.api import app as app_module

    module = bytes.fromhex("0061736d01000000")  # the smallest valid module: the magic and version 1
    (tmp_path / "vendor" / "viewer").mkdir(parents=True)
    (tmp_path / "vendor" / "viewer" / "decoder.wasm").write_bytes(module)
    (tmp_path / "vendor" / "viewer" / "package.json").write_text("{}")  # the vendoring's recipe is not served
    monkeypatch.setattr(app_module, "STATIC", tmp_path)  # the served folder, with a module of our own in it
    url = f"{mounted}{PREFIX}/static/vendor/viewer/decoder.wasm"
    served = httpx.get(url)
    assert served.status_code == 200 and served.content == module
    assert served.headers["content-type"] == "application/wasm" and served.headers["cache-control"] == "no-cache"
    assert httpx.get(f"{mounted}{PREFIX}/static/vendor/viewer/package.json").status_code == 404

    browser.get(f"{mounted}{PREFIX}/api/v1/health")  # a page of the app's origin with no content policy
    outcome = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "WebAssembly.instantiateStreaming(fetch(arguments[0])).then(() => done('compiled'), (e) => done(String(e)));",
        url,
    )
    assert outcome == "compiled", outcome
