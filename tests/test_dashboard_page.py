"""The storage dashboard's page at 0, 1 and 1,000 samples, in headless Chromium, light and dark, 1280 and 1920
px wide: the real page against the real API (the plugin's FastAPI app on loopback, each sample count in its
own fresh PostgreSQL database). The page checks its own drawing (every chart label inside its chart and
apart from the others, every figure whole) and writes the result into ``body[data-selfcheck]``; these tests
read it, and show the check fails on a planted cut-off and a planted overlap.

The README's screenshots come from here: ``E2E3D_SCREENSHOTS=docs/dashboard pytest tests/test_dashboard_page.py``
(PNG with 256 colours, optimised with ``oxipng`` when ``pyoxipng`` is installed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from e2e3d_provider.hooks.metadata import SCHEMA, MetadataHook
from tests.helpers import REPO, ROLES, serve, token

pytestmark = [pytest.mark.slow, pytest.mark.one_server]  # PostgreSQL only: one S3 lane is enough

SAMPLES = (0, 1, 1000)
WIDTHS = (1280, 1920)
THEMES = ("light", "dark")
CHARTS = ("space", "objects", "disks", "throughput", "cache", "errors", "top-jobs", "top-datasets", "by-hour", "jobs")
SCREENSHOTS_ENV = "E2E3D_SCREENSHOTS"


def seed(metadata: MetadataHook, n: int) -> None:
    """``n`` samples of everything the dashboard draws, spread over the last 29 days (one: ten minutes ago),
    sizes orders of magnitude apart as a real deployment's are (input GBs, models MBs, archive empty)."""
    if n == 0:
        return
    span = "interval '29 days'" if n > 1 else "interval '0'"
    # sample i of n: at now - 10 min - span * (n - 1 - i) / max(n - 1, 1); pseudo-random r(i) in [0, 1)
    at = f"now() - interval '10 minutes' - {span} * (({n} - 1 - i)::float / greatest({n} - 1, 1))"
    rnd = "((i * 7919) % 997) / 997.0"
    with metadata.transaction() as cur:
        cur.execute(f"""
            INSERT INTO {SCHEMA}.storage_stats (bucket, prefix, objects, bytes, taken_at)
            SELECT b.bucket, '', (b.objects * (0.8 + 0.2 * (i + 1) / {n}))::bigint,
                   (b.bytes * (0.8 + 0.2 * (i + 1) / {n}))::bigint, {at}
            FROM generate_series(0, {n} - 1) i,
                 (VALUES ('input', 52000, 41.7e9), ('output', 880, 2.1e9), ('models', 12, 3.5e8), ('archive', 0, 0))
                   AS b(bucket, objects, bytes)""")
        cur.execute(f"""
            INSERT INTO {SCHEMA}.worker_disks (at, host, data_root, total_bytes, used_bytes, cache_bytes)
            SELECT {at}, h.host, '/data', h.total, (h.used * (0.7 + 0.3 * (i + 1) / {n}))::bigint, 0
            FROM generate_series(0, {n} - 1) i,
                 (VALUES ('worker-a', 500e9, 210e9), ('worker-b', 250e9, 61e9)) AS h(host, total, used)""")
        cur.execute(f"""
            INSERT INTO {SCHEMA}.jobs (job_id, stamp, dataset, status, started_at, finished_at, files, bytes, error)
            SELECT 'scan-' || lpad(i::text, 4, '0'), '20250101T000000Z', 'terrain-' || (i % 7),
                   (ARRAY['succeeded', 'succeeded', 'succeeded', 'failed', 'archived', 'running'])[1 + i % 6],
                   {at} - interval '5 minutes' * (1 + {rnd}), CASE WHEN i % 6 = 5 THEN NULL ELSE {at} END,
                   CASE WHEN i % 6 IN (3, 5) THEN NULL ELSE 20 + i % 30 END,
                   CASE WHEN i % 6 IN (3, 5) THEN NULL ELSE (3e8 * (1 + {rnd}))::bigint END,
                   CASE WHEN i % 6 = 3 THEN 'StorageUnreachableError: object storage did not answer in 60 s' END
            FROM generate_series(0, {n} - 1) i""")
        cur.execute(f"""
            INSERT INTO {SCHEMA}.transfers (direction, bucket, files, bytes, skipped_bytes, seconds, created_at)
            SELECT (ARRAY['download', 'upload', 'copy'])[1 + i % 3], 'output', 20, (1.2e9 * (0.2 + {rnd}))::bigint,
                   CASE WHEN i % 3 = 0 THEN (3e8 * {rnd})::bigint ELSE 0 END,
                   4 + 20 * ((i * 104729) % 991) / 991.0, {at}
            FROM generate_series(0, {n} - 1) i""")
        cur.execute(f"""
            INSERT INTO {SCHEMA}.storage_errors (at, operation, bucket, error_class, host)
            SELECT {at}, (ARRAY['get', 'put', 'list', 'stat'])[1 + i % 4], 'output', 'StorageUnreachableError',
                   'worker-a'
            FROM generate_series(0, {n} - 1) i""")
        cur.execute(f"""
            INSERT INTO {SCHEMA}.access_log (at, actor, action, job_id, bucket, key)
            SELECT {at}, 'viewer', 'download', 'scan-' || lpad((i % 40)::text, 4, '0'), 'output', 'k'
            FROM generate_series(0, {n} - 1) i""")


@pytest.fixture(scope="module")
def dashboards(airflow_db, connections: dict[str, dict]) -> Iterator[dict[int, str]]:
    """The plugin's app served once per sample count, each on a fresh database of the session's PostgreSQL."""
    from e2e3d_provider.api.app import create_app

    os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = "admin:admin,viewer:viewer,runner:user"
    base = connections["e2e3d_metadata"]
    admin = psycopg2.connect(
        host=base["host"], port=base["port"], user=base["login"], password=base["password"], dbname=base["schema"]
    )
    admin.autocommit = True
    urls, servers, made = {}, [], []
    try:
        for n in SAMPLES:
            name = f"e2e3d_dashboard_{n}"
            with admin.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {name}")
                cur.execute(f"CREATE DATABASE {name}")
            made.append(name)
            conn_id = f"e2e3d_dashboard_{n}"
            os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps({**base, "schema": name})
            metadata = MetadataHook(conn_id)
            metadata.migrate()
            seed(metadata, n)
            url, server, thread = serve(create_app(metadata_conn_id=conn_id))
            urls[n] = url
            servers.append((server, thread))
        yield urls
    finally:
        for server, thread in servers:
            server.should_exit = True
            thread.join(10)
        with admin.cursor() as cur:
            for name in made:
                cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def open_dashboard(browser, url: str, theme: str, width: int, extra: str = "") -> dict:
    """Open the page as a signed-in viewer (the UI's login cookie) and wait for it to draw and check itself."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(width, 1000)
    browser.get(f"{url}/api/v1/health")  # the cookie belongs to the API's origin, as the UI's login sets it
    browser.add_cookie({"name": "_token", "value": token("viewer", ROLES["viewer"]), "path": "/"})
    browser.get(f"{url}/dashboard?theme={theme}{extra}")
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    body = browser.find_element(By.TAG_NAME, "body")
    assert body.get_attribute("data-ready") == "true", browser.find_element(By.ID, "error").text
    return {
        "problems": json.loads(body.get_attribute("data-selfcheck")),
        "theme": browser.execute_script("return document.documentElement.dataset.theme"),
        "charts": {
            c: browser.execute_script(
                "const e = document.getElementById(arguments[0]);"
                "return [e.dataset.empty, e.dataset.points, e.textContent];",
                f"chart-{c}",
            )
            for c in CHARTS
        },
        "text": body.text,
    }


def screenshot(browser, name: str, tmp_path: Path) -> None:
    """A full-page screenshot; copied to $E2E3D_SCREENSHOTS (relative to the repo) when set, optimised."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    width = browser.execute_script("return window.outerWidth")
    browser.set_window_size(width, height + 20)
    shot = tmp_path / f"{name}.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    target = os.environ.get(SCREENSHOTS_ENV)
    if target:  # for the repository: 256 colours (no dithering: flat UI colours stay flat), then oxipng
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


@pytest.mark.parametrize("samples", SAMPLES)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("theme", THEMES)
def test_every_chart_is_readable(dashboards, browser, samples: int, width: int, theme: str, tmp_path: Path) -> None:
    page = open_dashboard(browser, dashboards[samples], theme, width)
    assert page["theme"] == theme
    assert page["problems"] == [], page["problems"]
    for chart, (is_empty, points, text) in page["charts"].items():
        if samples == 0:  # an explained empty state, never empty axes
            assert is_empty == "true" and len(text) > 30, (chart, text)
        else:
            assert is_empty == "false" and int(points) >= 1, (chart, text)
    text = page["text"]
    assert "T00:00:00" not in text and "+00:00" not in text  # no raw ISO time anywhere
    if samples:
        assert "41.7 GB" in text and "52,000 objects" in text  # the latest input snapshot, formatted
        assert "results" in text  # the job list links each published job's results
    else:
        assert "No jobs yet" in text and "No storage snapshot" in text
    if samples == 1:  # one sample: said so, not "not growing"
        assert "one sample so far; a growth rate needs 1 h of them" in text
    if samples == 1000:
        assert "Log scale" in text and "52,000 objects · growing" in text  # it grew: never "not growing"
        assert "StorageUnreachableError" in text  # a failed job's reason in the job list
    screenshot(browser, f"dashboard-{samples}-{width}-{theme}", tmp_path)


def test_the_self_check_fails_on_a_cut_off_and_an_overlapping_label(dashboards, browser) -> None:
    open_dashboard(browser, dashboards[1000], "light", 1280)
    problems = browser.execute_script("""
        const done = Plotly.relayout('chart-space', {'margin.l': 0, 'margin.b': 0, 'yaxis.automargin': false,
                                                     'xaxis.automargin': false});
        return done.then(() => window.e2e3dSelfCheck());""")
    assert any(p.startswith('chart-space: label "') and p.endswith("is cut off") for p in problems), problems
    problems = browser.execute_script("""
        const done = Plotly.relayout('chart-by-hour', {'xaxis.tickvals': [...Array(24).keys()],
            'xaxis.ticktext': [...Array(24).keys()].map((h) => 'hour ' + h + ' of the day'), 'xaxis.tickangle': 0});
        return done.then(() => window.e2e3dSelfCheck());""")
    assert any(p.startswith('chart-by-hour: label "hour') and "overlaps" in p for p in problems), problems


def test_the_page_follows_the_airflow_ui_theme(dashboards, browser) -> None:
    """The Airflow 3 UI keeps its theme in localStorage["theme"] (next-themes): the page, shown in the UI's
    frame on the same origin, reads it; "system" (or nothing) follows the browser's prefers-color-scheme."""
    url = dashboards[1]
    open_dashboard(browser, url, "light", 1280)
    for stored, expected in (("dark", "dark"), ("light", "light")):
        browser.execute_script("localStorage.setItem('theme', arguments[0])", stored)
        browser.get(f"{url}/dashboard")
        theme = browser.execute_script("return document.documentElement.dataset.theme")
        assert theme == expected, stored
    browser.execute_script("localStorage.setItem('theme', 'system')")
    browser.get(f"{url}/dashboard")
    system = browser.execute_script("return matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light'")
    assert browser.execute_script("return document.documentElement.dataset.theme") == system
    browser.execute_script("localStorage.removeItem('theme')")
