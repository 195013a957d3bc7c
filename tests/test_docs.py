"""The docs site (``docs/``) builds offline with warnings as errors, its generated pages cover the code, and
every repository path a page names exists.

The build runs Sphinx as a user would (``python -m sphinx -W``), with every HTTP proxy pointed at a closed
port, so a page, theme or extension that fetches anything fails the build. The CLI page is generated from
``build_parser()`` and the API page from ``create_app().openapi()``; the checks below read both at test time,
so a new subcommand or route that the pages miss fails here.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, so every fetch fails at once


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML site, built once for this module."""
    tmp = tmp_path_factory.mktemp("docs")
    env = {
        **os.environ,
        "HTTP_PROXY": CLOSED,
        "HTTPS_PROXY": CLOSED,
        "http_proxy": CLOSED,
        "https_proxy": CLOSED,
        "NO_PROXY": "",
        "no_proxy": "",
        "AIRFLOW_HOME": str(tmp / "airflow-home"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    command += ["-d", str(tmp / "doctrees"), str(DOCS), str(tmp / "html")]
    # run outside the checkout, so Sphinx imports the installed package, as the checks below do (the checkout
    # on sys.path first would shadow it)
    result = subprocess.run(command, env=env, cwd=tmp, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stderr[-6000:]}"
    return tmp / "html"


def page_text(site: Path, name: str) -> str:
    """A built page's text, tags stripped and entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", (site / f"{name}.html").read_text()))


def test_the_docs_build_offline_with_warnings_as_errors(site: Path) -> None:
    for name in ("index", "getting-started", "concepts", "cli", "api", "configuration", "changelog", "operators"):
        assert (site / f"{name}.html").is_file(), name
    # every image a page shows is in the site (the screenshots of docs/dashboard/ and docs/viewer/)
    images = [m for page in DOCS.glob("*.md") for m in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text())]
    assert images, "no image found on the pages"
    missing = [image for image in images if not (site / "_images" / Path(image).name).is_file()]
    assert not missing, f"images the pages show that the site lacks: {missing}"


def subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    """Every subcommand of the parser, nested ones as ``stack up`` ..."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append(f"{prefix}{name}")
                found += subcommands(sub, f"{prefix}{name} ")
    return found


def test_the_cli_page_names_every_subcommand(site: Path) -> None:
    from e2e3d_provider.cli import build_parser

    names = subcommands(build_parser())
    assert len(names) >= 10  # the walk found the command's subcommands, not nothing
    text = " ".join(page_text(site, "cli").split())
    missing = [name for name in names if f"e2e3d {name}" not in text]
    assert not missing, f"subcommands missing from the CLI page: {missing}"


def test_the_api_page_names_every_operation_id(site: Path) -> None:
    from e2e3d_provider.api.app import create_app

    spec = create_app().openapi()
    ids = [op["operationId"] for item in spec["paths"].values() for op in item.values() if "operationId" in op]
    assert ids, "the OpenAPI document has no operations"
    text = page_text(site, "api")
    missing = [op_id for op_id in ids if op_id not in text]
    assert not missing, f"operation ids missing from the API page: {missing}"
    paths = [path for path in spec["paths"] if path not in text]
    assert not paths, f"paths missing from the API page: {paths}"


def test_the_configuration_page_names_every_declared_setting(site: Path) -> None:
    from e2e3d_provider.core import settings

    names = [s.name for s in (*settings.AIRFLOW_OPTIONS, *settings.PLATFORM_KEYS)]
    assert names
    text = page_text(site, "configuration")
    missing = [name for name in names if name not in text]
    assert not missing, f"settings missing from the configuration page: {missing}"


def test_the_changelog_page_is_the_changelog(site: Path) -> None:
    first_version = re.search(r"^## (\d+\.\d+\.\d+)$", (REPO / "CHANGELOG.md").read_text(), re.M)
    assert first_version is not None
    assert first_version.group(1) in page_text(site, "changelog")


#: where a path written in a page may start: the checkout, the package, the lifecycle's rooms
BASES = (REPO, REPO / "e2e3d_provider", REPO / "e2e3d_provider" / "lifecycle")
TOP_FILES = {p.name for p in REPO.iterdir() if p.is_file()}


def repo_path(token: str) -> Path | None:
    """The file a backticked token names when it reads as a path in this repository, else None.

    A token reads as a path when its first folder is a folder of the checkout, of the package or of the
    lifecycle (``tests/test_roles.py``, ``core/retry.py``, ``results/publish.py``), or when it is a file at the
    checkout's top (``setup.cfg``). A ``::test`` or ``:function`` suffix is dropped. Bucket keys
    (``output/<job_id>/``), placeholders and absolute paths are not repository paths.
    """
    token = token.split("::", 1)[0]
    token = re.sub(r":[A-Za-z_][\w.]*$", "", token)
    hidden = token[:1] in ("/", "~", "$", ".") and not token.startswith((".ci/", ".env"))
    if not token or hidden or re.search(r"[<>{}*|\s]", token):
        return None
    if token in TOP_FILES:
        return REPO / token
    if "/" not in token:
        return None
    first = token.split("/", 1)[0]
    for base in BASES:
        if (base / first).is_dir() and not first.startswith("__"):
            return base / token
    return None


def test_every_repository_path_a_page_names_exists() -> None:
    pages = [*sorted(DOCS.glob("*.md")), REPO / "README.md"]
    assert len(pages) >= 16
    checked, missing = 0, []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold commands, not citations
        for quoted in re.findall(r"`([^`\n]+)`", text):
            for word in quoted.split():  # a command names its script: `python -m bench.x`, `pytest tests/y.py`
                token = word.split("=", 1)[-1].rstrip(",;")
                path = repo_path(token)
                if path is None:
                    continue
                checked += 1
                if not path.exists():
                    missing.append(f"{page.name}: {token}")
    assert checked >= 50, f"only {checked} paths recognised: the check has stopped reading the pages"
    assert not missing, "paths the docs name that the repository does not have:\n" + "\n".join(missing)


def test_the_path_check_catches_a_wrong_path() -> None:
    """The check above must be able to fail: the issue's wrong path reads as a path and does not exist."""
    wrong = repo_path("e2e3d_provider/sample_data/terrain/")
    assert wrong is not None and not wrong.exists()
    assert repo_path("output/<job_id>/") is None and repo_path("input/.cas/sha256/") is None
    assert repo_path("tests/conftest.py::airflow_deployment") == REPO / "tests" / "conftest.py"


def test_the_readme_links_every_docs_page_and_each_link_resolves() -> None:
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)\)", readme)
    broken = [link for link in links if "://" not in link and not (REPO / link).exists()]
    assert not broken, f"README links to files that do not exist: {broken}"
    # index.md is the site's table of contents; changelog.md includes CHANGELOG.md, which the README links itself
    pages = {p.relative_to(REPO).as_posix() for p in DOCS.glob("*.md") if p.name not in ("index.md", "changelog.md")}
    unlinked = sorted(pages - set(links))
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def api_path_pattern(path: str) -> re.Pattern[str]:
    """A route of the OpenAPI document as a pattern: a ``{param}`` is one segment, ``{path}`` any number."""
    parts = re.split(r"(\{[^}]+\})", path)
    regex = "".join(
        (".+" if part == "{path}" else "[^/]+") if part.startswith("{") else re.escape(part) for part in parts
    )
    return re.compile(regex)


def test_every_api_path_a_page_names_is_a_route() -> None:
    """A path of the results API written on a page (in prose, a table or a curl line) must be a route of the
    app's OpenAPI document, so a renamed or versioned route fails here until the pages follow it."""
    from e2e3d_provider.api.app import create_app

    routes = [api_path_pattern(path) for path in create_app().openapi()["paths"]]
    named, unknown = 0, []
    for page in [*sorted(DOCS.glob("*.md")), REPO / "README.md"]:
        for found in re.findall(r"/e2e3d(/api/[^\s`?)\"',|\\]*)", page.read_text()):
            named += 1
            concrete = re.sub(r"<[^>]+>|\{[^}]+\}", "x", found)
            if not any(route.fullmatch(concrete) for route in routes):
                unknown.append(f"{page.name}: /e2e3d{found}")
    assert named >= 10, f"only {named} API paths found on the pages: the check has stopped reading them"
    assert not unknown, "API paths on the pages that the app does not serve:\n" + "\n".join(sorted(set(unknown)))
