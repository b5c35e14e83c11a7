"""The wheel the images install is complete: built as the Dockerfile's `wheel` stage builds it, it
holds every Python package of the source tree and the files the plugin build and the CLI read.

The editable install the tests run on sees every folder; a wheel holds only what pyproject.toml
lists, so a subpackage missing there breaks the images and nothing else.
"""

from __future__ import annotations

import tomllib
import zipfile

import pytest
from fixtures_deploy import REPO_ROOT

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
