"""Every Python block in the README and the docs runs, as written, against a real `elunet serve` of the trained
fashion-cnn (the model `make demo` serves, under its name): only the host ports are those of the test's server.
Each block runs in a process of its own, as a reader would run it (the KServe SDK and tritonclient cannot share
one: their generated modules declare the same protobuf symbols)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fixtures_docs import REPO_ROOT, code_blocks

from elunet.repository import ModelRepository
from elunet.train.config import TrainConfig

BLOCKS = code_blocks("python")
# The addresses the examples are written for: elunet serve's default ports.
HTTP_DEFAULT, GRPC_DEFAULT = "localhost:8000", "localhost:8001"


def test_the_docs_have_python_examples_for_every_client():
    text = "\n".join(block for _, block in BLOCKS)
    for client in ("tritonclient.http", "tritonclient.grpc", "kserve"):
        assert client in text, f"no example uses {client}"


@pytest.fixture(scope="module")
def demo_server(exported_repository, start_server):
    (name,) = ModelRepository(exported_repository).models()
    assert name == TrainConfig().model_name, "the examples name the default model; the test serves it under that name"
    return start_server(exported_repository)


@pytest.mark.slow
@pytest.mark.parametrize("page, block", BLOCKS, ids=[f"{page.relative_to(REPO_ROOT)}:{i}" for i, (page, _) in enumerate(BLOCKS)])
def test_python_example_runs_against_a_real_server(page, block, demo_server):
    assert HTTP_DEFAULT in block or GRPC_DEFAULT in block, f"{page.name}: an example that calls no server is not run here"
    code = block.replace(HTTP_DEFAULT, demo_server.url.removeprefix("http://")).replace(GRPC_DEFAULT, demo_server.grpc_url)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0, f"{page.relative_to(REPO_ROOT)}:\n{code}\n{done.stdout}{done.stderr}"
    assert done.stdout.strip(), "each example prints what it got"
