"""Every Python block in the README and the docs runs. A block written for `elunet serve` on its default ports runs
here, as written, against a real server of the trained fashion-cnn (the model `make demo` serves, under its name):
only the host ports are those of the test's server. Each runs in a process of its own, as a reader would run it (the
KServe SDK and tritonclient cannot share one: their generated modules declare the same protobuf symbols). Any other
block is run by a test of its own feature, which reads it from its page: such a test must exist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_docs import REPO_ROOT, code_blocks

from elunet.repository import ModelRepository
from elunet.train.config import TrainConfig

# The addresses the examples run here are written for: elunet serve's default ports.
HTTP_DEFAULT, GRPC_DEFAULT = "localhost:8000", "localhost:8001"
BLOCKS = code_blocks("python")
SERVED = [(page, block) for page, block in BLOCKS if HTTP_DEFAULT in block or GRPC_DEFAULT in block]
OTHERS = [(page, block) for page, block in BLOCKS if (page, block) not in SERVED]


def test_the_docs_have_python_examples_for_every_client():
    text = "\n".join(block for _, block in SERVED)
    for client in ("tritonclient.http", "tritonclient.grpc", "kserve"):
        assert client in text, f"no example uses {client}"


@pytest.fixture(scope="module")
def demo_server(exported_repository, start_server):
    (name,) = ModelRepository(exported_repository).models()
    assert name == TrainConfig().model_name, "the examples name the default model; the test serves it under that name"
    return start_server(exported_repository)


def test_every_other_python_example_is_run_by_a_test_that_reads_its_page():
    tests = {path: path.read_text() for path in (REPO_ROOT / "tests").glob("test_*.py") if path.name != Path(__file__).name}
    for page, _ in OTHERS:
        runners = [path.name for path, source in tests.items() if f'"{page.name}"' in source and "```python" in source]
        assert runners, f"{page.relative_to(REPO_ROOT)}: a Python block no test runs (none reads the page's ```python blocks)"


@pytest.mark.slow
@pytest.mark.parametrize("page, block", SERVED, ids=[f"{page.relative_to(REPO_ROOT)}:{i}" for i, (page, _) in enumerate(SERVED)])
def test_python_example_runs_against_a_real_server(page, block, demo_server):
    code = block.replace(HTTP_DEFAULT, demo_server.url.removeprefix("http://")).replace(GRPC_DEFAULT, demo_server.grpc_url)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0, f"{page.relative_to(REPO_ROOT)}:\n{code}\n{done.stdout}{done.stderr}"
    assert done.stdout.strip(), "each example prints what it got"
