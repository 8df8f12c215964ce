"""The public API is written once: ``poolsim.__all__`` (plus ``poolsim.metrics``), documented.

As in httpx's ``tests/test_exported_members.py``: the export list is sorted,
names what exists, and every public name is documented under ``docs/reference/``.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from types import ModuleType

import pytest

import poolsim
import poolsim.metrics
import poolsim.queue
import poolsim.sim
import poolsim.widgets

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "reference"
MODULES = [poolsim, poolsim.metrics, poolsim.sim, poolsim.queue, poolsim.widgets]
PUBLIC = [(module, name) for module in MODULES for name in module.__all__]
IDS = [f"{module.__name__}.{name}" for module, name in PUBLIC]


def test_all_is_sorted() -> None:
    assert poolsim.__all__ == sorted(poolsim.__all__), (
        f"sort poolsim.__all__ with plain sorted(): {sorted(poolsim.__all__)}"
    )


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_all_has_no_duplicates(module: ModuleType) -> None:
    assert len(module.__all__) == len(set(module.__all__))


@pytest.mark.parametrize(("module", "name"), PUBLIC, ids=IDS)
def test_exported_name_exists(module: ModuleType, name: str) -> None:
    assert hasattr(module, name), f"{module.__name__}.__all__ names missing {name!r}"


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from poolsim import *", namespace)
    assert sorted(set(namespace) - {"__builtins__"}) == sorted(poolsim.__all__)


@functools.cache
def code_in_reference() -> str:
    """Every inline code span and fenced block of ``docs/reference/*.md``, joined."""
    chunks = []
    for page in sorted(REFERENCE.glob("*.md")):
        text = page.read_text()
        chunks += re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
        text = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
        chunks += re.findall(r"`([^`\n]+)`", text)
    return "\n".join(chunks)


def test_reference_pages_exist() -> None:
    pages = {page.name for page in REFERENCE.glob("*.md")}
    assert {"index.md", "pool.md", "config.md", "errors.md", "jobs.md", "records.md",
            "shutdown.md", "metrics.md"} <= pages


@pytest.mark.parametrize(("module", "name"), PUBLIC, ids=IDS)
def test_public_name_is_documented_in_reference(module: ModuleType, name: str) -> None:
    assert re.search(rf"\b{re.escape(name)}\b", code_in_reference()), (
        f"{module.__name__}.{name} is not documented (as code) under docs/reference/"
    )


def test_package_ships_py_typed() -> None:
    assert (Path(poolsim.__file__).parent / "py.typed").is_file()
