"""mkdocs hook: the notebooks in ``notebooks/`` become pages of the site, read in place.

mkdocs only serves files under ``docs_dir``, and the notebooks live beside it. This hook
(listed under ``hooks:`` in ``mkdocs.yml``, excluded from the site by ``exclude_docs``):

- adds every ``notebooks/*.ipynb`` as a file whose source is the notebook itself (nothing is
  copied into ``docs/``), before mkdocs-jupyter turns ``.ipynb`` files into pages;
- appends them to the ``Notebooks`` section of ``nav`` and lists them on
  ``docs/notebooks/index.md``, so a new notebook needs no edit here or in ``mkdocs.yml``;
- appends a Markdown page that ``nav`` does not list to the section whose pages live in the
  same folder (``how-to/new.md`` joins the section of ``how-to/...``), with an INFO line,
  so a page added without editing ``mkdocs.yml`` is still reachable and the strict build
  still passes; list it in ``nav`` to give it its place;
- points the pages that embed saved widget state at the widget JavaScript shipped in
  ``docs/assets/widgets/`` instead of a CDN (the machines that build and read this site
  may be offline), and adds a download link to the ``.ipynb``.

Why not a ``docs/notebooks -> ../notebooks`` symlink: pytest collects ``docs/`` (doctests),
follows the link and would collect the notebooks twice once nbval runs them, and the nav
would still need every notebook listed by hand.
"""

from __future__ import annotations

import json
import logging
import posixpath
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.notebooks")

SECTION = "Notebooks"
FOLDER = "notebooks"  # beside mkdocs.yml, and the same folder in the site
INDEX = f"{FOLDER}/index.md"
WIDGETS_JS = "assets/widgets/embed.js"  # @jupyter-widgets/html-manager, no requirejs needed
CDN_RENDERER = "https://unpkg.com/@jupyter-widgets/html-manager@*/dist/embed-amd.js"
CDN_RENDERER_OLD = "https://unpkg.com/@jupyter-js-widgets@*/dist/embed.js"


def notebooks(config: Any) -> list[Path]:
    """The notebooks to publish, in file-name order (``01-...``, ``02-...``)."""
    folder = Path(config.config_file_path).resolve().parent / FOLDER
    return sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))


def title(path: Path) -> str:
    """The notebook's first Markdown heading, else its file name."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError):
        return path.stem
    for cell in cells:
        if cell.get("cell_type") != "markdown":
            continue
        source = cell.get("source", "")
        text = "".join(source) if isinstance(source, list) else source
        for line in text.splitlines():
            if line.startswith("#"):
                return line.lstrip("#").strip() or path.stem
    return path.stem


def escape(text: str) -> str:
    """``text`` as Markdown link text: brackets and emphasis marks literal, code spans kept."""
    return "".join(f"\\{c}" if c in "\\[]*_<" else c for c in text)


def listed(nav: Any) -> list[str]:
    """Every page path in a ``nav`` (sub)tree."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [uri for value in nav.values() for uri in listed(value)]
    if isinstance(nav, list):
        return [uri for item in nav for uri in listed(item)]
    return []


def on_config(config: Any) -> Any:
    nav = config.nav or []
    known = set(listed(nav))
    docs = Path(config.docs_dir)
    for item in nav:
        if not (isinstance(item, dict) and len(item) == 1):
            continue
        (name, pages), = item.items()
        if not isinstance(pages, list):
            continue
        pages = list(pages)
        if name == SECTION:
            pages += [f"{FOLDER}/{p.name}" for p in notebooks(config)
                      if f"{FOLDER}/{p.name}" not in known]
        folders = {uri.split("/")[0] for uri in listed(pages) if "/" in uri}
        for folder in sorted(folders):
            for path in sorted((docs / folder).glob("*.md")):
                uri = f"{folder}/{path.name}"
                if uri not in known:
                    log.info("nav: %s is not listed in mkdocs.yml; added to %r", uri, name)
                    pages.append(uri)
                    known.add(uri)
        item[name] = pages
    return config


@event_priority(100)  # before mkdocs-jupyter's on_files wraps .ipynb files as pages
def on_files(files: Files, config: Any) -> Files:
    for path in notebooks(config):
        src_uri = f"{FOLDER}/{path.name}"
        if files.get_file_from_path(src_uri) is None:
            files.append(File(src_uri, src_dir=str(path.parent.parent),
                              dest_dir=config.site_dir,
                              use_directory_urls=config.use_directory_urls))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """List the notebooks on the notebooks index page."""
    if page.file.src_uri != INDEX:
        return markdown
    found = notebooks(config)
    if not found:
        return markdown + "\n_No notebook has been published yet._\n"
    lines = [f"- [{escape(title(p))}]({p.name})" for p in found]
    return markdown + "\n" + "\n".join(lines) + "\n"


def on_post_page(output: str, page: Any, config: Any) -> str:
    """Notebook pages: local widget JavaScript, and a download link to the ``.ipynb``."""
    if not page.file.src_uri.endswith(".ipynb"):
        return output
    page_dir = posixpath.dirname(page.file.dest_uri)
    local = posixpath.relpath(WIDGETS_JS, page_dir or ".")
    for cdn in (CDN_RENDERER, CDN_RENDERER_OLD):
        output = output.replace(cdn, local)
    name = posixpath.basename(page.file.src_uri)
    link = (f'<p class="poolsim-nb-download"><a href="{name}" download>Download this notebook '
            f"(<code>{name}</code>)</a>: outputs as stored, not re-run for the site.</p>")
    wrapper = '<div class="jupyter-wrapper">'
    return output.replace(wrapper, link + wrapper, 1)
