"""The one prepared GPU check: what `make gpu-wheels` carries (scripts/gpu_wheels.py) and scripts/gpu_check.sh.

Runs without a GPU or network: the resolution reads this environment's installed metadata. The script
itself is dry-run by hand (`make gpu-wheels && bash scripts/gpu_check.sh`, GPU sections skipping).
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def gpu_wheels():
    spec = importlib.util.spec_from_file_location("gpu_wheels", ROOT / "scripts" / "gpu_wheels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_check_extra_restates_no_other_extras_spec_differently():
    extras = PYPROJECT["project"]["optional-dependencies"]
    elsewhere = {canonicalize_name(Requirement(r).name): r for name, reqs in extras.items() if name != "gpu-check" for r in reqs}
    for line in extras["gpu-check"]:
        name = canonicalize_name(Requirement(line).name)
        if name != "elunet":
            assert elsewhere.get(name, line) == line, f"gpu-check says {line}, another extra {elsewhere[name]}"


def test_the_carried_wheels_cover_the_serve_path_and_leave_the_image_packages_out():
    module = gpu_wheels()
    pins = module.resolve(PYPROJECT, module.EXTRA, "3.12", set(module.IMAGE_PACKAGES))
    # The serve dependencies the old script's list lacked (the server exited on import), the core's, pytest.
    assert {"orjson", "pysimdjson", "httptools", "grpcio-health-checking", "swagger-ui-bundle", "typer", "pydantic",
            "safetensors", "pytest"} <= set(pins)
    assert not set(pins) & {"torch", "numpy", "onnxruntime"}
    assert all(pins[name] == metadata.version(name) for name in pins)  # what the tests here ran


def test_the_gpu_check_script_parses():
    done = subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

