"""Docs fixtures: the pages (README, docs/), their code blocks, and the site's generator (scripts/docs_hooks.py)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS_DIR = REPO_ROOT / "docs"
HOOKS = REPO_ROOT / "scripts" / "docs_hooks.py"


def doc_pages() -> list[Path]:
    """Every page a reader meets: the README and the site's Markdown sources."""
    return [REPO_ROOT / "README.md", *sorted(DOCS_DIR.rglob("*.md"))]


def code_blocks(language: str) -> list[tuple[Path, str]]:
    """(page, text) of every fenced block in ``language`` on every page."""
    return [(page, block) for page in doc_pages() for block in re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), flags=re.S | re.M)]


def load_hooks():
    """scripts/docs_hooks.py as a module (it is mkdocs.yml's hook file, not part of the package)."""
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (it comes with elunet[docs], part of elunet[dev])")
    spec = importlib.util.spec_from_file_location("docs_hooks", HOOKS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def docs_hooks():
    return load_hooks()
