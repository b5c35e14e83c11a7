"""The wheel the images install is complete: built as the Dockerfile's `wheel` stage builds it, it
holds every Python package of the source tree and the files the plugin build and the CLI read.

The editable install the tests run on sees every folder; a wheel holds only what pyproject.toml
lists, so a subpackage missing there breaks the images and nothing else.
"""

from __future__ import annotations

import ast
import re
import tomllib
import zipfile

import pytest
from fixtures_deploy import BUILD_LOG, REPO_ROOT
from packaging.specifiers import SpecifierSet

PYPROJECT = REPO_ROOT / "pyproject.toml"


@pytest.fixture(scope="module")
def wheel_files(elunet_wheel) -> set[str]:
    return set(zipfile.ZipFile(elunet_wheel).namelist())


def source_packages() -> dict[str, Path]:
    """Importable name -> folder, for every folder with __init__.py under the mapped stage folders."""
    package_dirs = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    found = {}
    for name, folder in package_dirs.items():
        root = REPO_ROOT / folder
        for init in root.rglob("__init__.py"):
            relative = init.parent.relative_to(root)
            found[".".join([name, *relative.parts])] = init.parent
    return found


def test_wheel_holds_every_python_package(wheel_files):
    missing = sorted(name for name in source_packages() if f"{name.replace('.', '/')}/__init__.py" not in wheel_files)
    assert not missing, f"packages missing from the wheel (add them to `packages` in pyproject.toml): {missing}"


def test_wheel_holds_the_plugin_sources_and_contract(wheel_files):
    # The CLI reads the contract at import; the plugin's CMake project reads it from beside plugins/.
    assert "elunet/elu_plugin.json" in wheel_files
    assert "elunet/plugins/elu/CMakeLists.txt" in wheel_files
    assert any(f.startswith("elunet-") and f.endswith("entry_points.txt") for f in wheel_files)


def test_the_build_prints_no_warnings(elunet_wheel):
    # setuptools' deprecations (e.g. project.license as a table) flooded `make demo`'s install step.
    log = (elunet_wheel.parent / BUILD_LOG).read_text()
    warnings = [line.strip() for line in log.splitlines() if "Warning:" in line]
    assert not warnings, warnings


def minimum_python() -> tuple[int, int]:
    requires = tomllib.loads(PYPROJECT.read_text())["project"]["requires-python"]
    (minimum,) = [s.version for s in SpecifierSet(requires) if s.operator == ">="]
    major, minor = minimum.split(".")[:2]
    return int(major), int(minor)


def test_requires_python_is_the_oldest_python_the_code_runs_on():
    minimum = minimum_python()
    sources = [f for folder in source_packages().values() for f in folder.glob("*.py")]
    imported = set()
    for path in sources:
        tree = ast.parse(path.read_text(), filename=str(path), feature_version=minimum)  # no newer syntax
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    # tomllib is new in 3.11, and so is asyncio.TimeoutError being the builtin TimeoutError that
    # serve/ catches; older versions do not run the code that requires-python admits.
    assert "tomllib" in imported and minimum >= (3, 11)
    readme = re.search(r"Python ≥ (\d+)\.(\d+)", (REPO_ROOT / "README.md").read_text())
    assert readme and (int(readme[1]), int(readme[2])) == minimum, "the README's Quick start names another Python"
