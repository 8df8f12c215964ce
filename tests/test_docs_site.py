"""The docs site builds with ``mkdocs build --strict`` and has the pages people look for.

The build runs once per session (about 10 s), with the venv's mkdocs, into a temporary
folder. Strict mode turns every warning into a failure: a broken link or anchor, a page in
``docs/`` missing from the ``nav`` of ``mkdocs.yml``, a nav entry without a page. The
notebooks checked are whatever ``notebooks/*.ipynb`` exist when the test runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import posixpath
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MKDOCS = Path(sys.executable).parent / "mkdocs"
HOOK = DOCS / "hooks" / "mkdocs_notebooks.py"
CDN_WIDGETS = re.compile(r"unpkg\.com|cdn\.jsdelivr\.net|require\.min\.js")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    build = subprocess.run([str(MKDOCS), "build", "--strict", "--site-dir", str(out)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=110)
    log = build.stdout + build.stderr
    assert build.returncode == 0, log
    assert "WARNING" not in log, log
    return out


def load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("poolsim_docs_mkdocs_notebooks", HOOK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_key_pages_are_built(site: Path) -> None:
    for page in ("index.html", "404.html", "tutorials/first-pool/index.html",
                 "how-to/grafana/index.html", "reference/index.html",
                 "reference/metrics/index.html", "explanation/design/index.html",
                 "notebooks/index.html", "search/search_index.json"):
        assert (site / page).is_file(), page
    home = (site / "index.html").read_text(encoding="utf-8")
    for section in ("tutorials/first-pool/", "how-to/", "reference/", "explanation/design/"):
        assert f'href="{section}' in home, section
    assert "worker_jobs_total" in (site / "reference/metrics/index.html").read_text("utf-8")


def test_every_markdown_page_is_built(site: Path) -> None:
    pages = sorted(p.relative_to(DOCS) for p in DOCS.rglob("*.md"))
    assert pages
    for page in pages:
        built = page.with_suffix("") / "index.html" if page.stem != "index" else (
            page.with_suffix(".html"))
        assert (site / built).is_file(), page


def test_downloads_and_assets_are_shipped_not_the_hook(site: Path) -> None:
    dashboard = json.loads((site / "grafana/poolsim-dashboard.json").read_text("utf-8"))
    assert dashboard["title"]
    assert (site / "examples/http_503.py").is_file()
    assert (site / "assets/widgets/embed.js").stat().st_size > 1_000_000
    assert "assets/stylesheets/notebooks.css" in (site / "index.html").read_text("utf-8")
    assert not (site / "hooks").exists()
    assert not list(site.rglob("__pycache__"))


def test_every_notebook_is_a_page_with_its_outputs_and_source(site: Path) -> None:
    index = (site / "notebooks/index.html").read_text(encoding="utf-8")
    for notebook in NOTEBOOKS:
        page = site / "notebooks" / notebook.stem / "index.html"
        assert page.is_file(), notebook.name
        assert (page.parent / notebook.name).read_bytes() == notebook.read_bytes()
        html = page.read_text(encoding="utf-8")
        assert 'class="jupyter-wrapper"' in html
        assert f'href="{notebook.name}" download' in html
        assert f'href="{notebook.stem}/"' in index, notebook.name  # listed on the index
        stored = json.loads(notebook.read_text(encoding="utf-8"))
        outputs = [o for cell in stored["cells"] for o in cell.get("outputs", [])]
        if any("image/png" in o.get("data", {}) for o in outputs):
            assert "data:image/png;base64," in html, notebook.name  # stored, not re-run
        assert not CDN_WIDGETS.search(html), notebook.name
        if "widgets" in stored.get("metadata", {}):  # saved widget state: local renderer
            assert "../../assets/widgets/embed.js" in html, notebook.name
            assert "application/vnd.jupyter.widget-state+json" in html, notebook.name


def test_no_page_loads_widget_javascript_from_a_cdn(site: Path) -> None:
    for page in site.rglob("*.html"):
        assert not CDN_WIDGETS.search(page.read_text(encoding="utf-8")), page


def test_hook_points_widget_pages_at_the_local_renderer() -> None:
    hook = load_hook()
    cdn = "https://unpkg.com/@jupyter-widgets/html-manager@*/dist/embed-amd.js"
    html = f"<script>var widgetRendererSrc = '{cdn}';</script><div class=\"jupyter-wrapper\">"
    for dest_uri in ("notebooks/02-capacity-planning/index.html",  # use_directory_urls
                     "notebooks/02-capacity-planning.html"):
        page = SimpleNamespace(file=SimpleNamespace(
            src_uri="notebooks/02-capacity-planning.ipynb", dest_uri=dest_uri))
        out = hook.on_post_page(html, page=page, config=None)
        local = re.search(r"widgetRendererSrc = '([^']+)'", out)
        assert local is not None
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(dest_uri), local[1]))
        assert resolved == "assets/widgets/embed.js"
        assert (DOCS / resolved).is_file()
        assert 'href="02-capacity-planning.ipynb" download' in out
    markdown_page = SimpleNamespace(file=SimpleNamespace(src_uri="index.md",
                                                         dest_uri="index.html"))
    assert hook.on_post_page(html, page=markdown_page, config=None) == html


def test_hook_titles_notebooks_by_their_first_heading(tmp_path: Path) -> None:
    hook = load_hook()
    notebook = tmp_path / "09-x.ipynb"
    notebook.write_text(json.dumps({"cells": [
        {"cell_type": "code", "source": ["# a comment, not a title"]},
        {"cell_type": "markdown", "source": ["Intro\n", "## Queueing, taught\n"]}]}))
    assert hook.title(notebook) == "Queueing, taught"
    notebook.write_text("not json")
    assert hook.title(notebook) == "09-x"


def test_hook_appends_unlisted_pages_and_notebooks_to_their_sections(tmp_path: Path) -> None:
    hook = load_hook()
    docs = tmp_path / "docs"
    for page in ("index.md", "how-to/a.md", "how-to/b.md", "how-to/new.md", "notebooks/index.md",
                 "reference/x.md"):
        (docs / page).parent.mkdir(parents=True, exist_ok=True)
        (docs / page).write_text("# page\n")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01-a.ipynb").write_text("{}")
    nav = [{"Home": "index.md"},
           {"How-to guides": ["how-to/b.md", {"A": "how-to/a.md"}]},
           {"Reference": ["reference/x.md"]},
           {"Notebooks": ["notebooks/index.md", "notebooks/01-a.ipynb"]}]
    config = SimpleNamespace(nav=nav, docs_dir=str(docs),
                             config_file_path=str(tmp_path / "mkdocs.yml"))
    hook.on_config(config)
    assert config.nav == [{"Home": "index.md"},
                          {"How-to guides": ["how-to/b.md", {"A": "how-to/a.md"}, "how-to/new.md"]},
                          {"Reference": ["reference/x.md"]},
                          {"Notebooks": ["notebooks/index.md", "notebooks/01-a.ipynb"]}]
    (tmp_path / "notebooks" / "02-b.ipynb").write_text("{}")
    hook.on_config(config)  # idempotent, and new notebooks join the Notebooks section
    assert config.nav[1]["How-to guides"][-1] == "how-to/new.md"
    assert config.nav[3]["Notebooks"][-1] == "notebooks/02-b.ipynb"
    assert len(hook.listed(config.nav)) == len(set(hook.listed(config.nav)))
