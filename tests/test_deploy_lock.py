"""The serving stack that ships is the one tested: bounded in pyproject.toml, pinned in deploy/serve.lock."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def test_every_serving_dependency_has_an_upper_bound():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    unbounded = [r for r in project["dependencies"] + project["optional-dependencies"]["serve"]
                 if not any(s.operator in ("<", "<=", "==", "~=") for s in Requirement(r).specifier)]
    assert not unbounded, f"give these an upper bound at the releases CI tests: {unbounded}"


def test_the_lock_holds_the_versions_the_tests_run_with():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "serve_lock.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_images_install_with_the_lock():
    dockerfile = (ROOT / "Dockerfile").read_text()
    runs = [line for line in dockerfile.splitlines() if "install-serve.sh" in line and "--mount" in line]
    assert runs and all("source=deploy/serve.lock,target=/tmp/serve.lock" in line for line in runs), runs
    assert 'pip install -c "$lock"' in (ROOT / "deploy" / "install-serve.sh").read_text()
