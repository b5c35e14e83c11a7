"""The TensorRT backend: an engine built from the exported model, served, vs the PyTorch reference.

Needs TensorRT and an NVIDIA GPU; skipped (with the reason) everywhere else.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from fixtures_serve import binary_infer_body, http, parse_infer_response

pytestmark = [pytest.mark.slow, pytest.mark.tensorrt, pytest.mark.gpu]
pytest.importorskip("tensorrt", reason="TensorRT is not installed (not installable on this machine); run on a TensorRT GPU host")


def test_tensorrt_backend_serves_the_engine_within_tolerance(start_server, exported_repository, trained_checkpoint, tmp_path):
    import shutil

    import torch

    from elunet.export.parity import Tolerance, compare
    from elunet.repository import ModelRepository
    from elunet.train.checkpoint import load_checkpoint

    repository = tmp_path / "repository"
    shutil.copytree(exported_repository, repository)
    (name,) = ModelRepository(repository).models()
    onnx_file = ModelRepository(repository).get(name).model_file()
    # A native-Elu export: the engine needs no plugin library. --checkpoint: the engine earns its parity
    # certificate, without which parity-gated serving refuses it.
    build = subprocess.run([sys.executable, "-m", "elunet", "build-engine", str(onnx_file), "--max-batch-size", "32",
                            "--checkpoint", str(trained_checkpoint)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    assert (repository / f"{name}-trt" / "1" / "parity.json").is_file()
    server = start_server(repository, backend="auto", max_batch_size=32)
    _, meta = server.get_json(f"/v2/models/{name}-trt")
    assert meta["platform"].startswith("tensorrt")
    pixels = np.random.default_rng(0).random((40, *ModelRepository(repository).get(name).card.input_shape), dtype=np.float32)
    body, headers = binary_infer_body(pixels)
    status, h, out = http("POST", f"{server.url}/v2/models/{name}-trt/infer", body, headers)
    assert status == 200, out
    with torch.inference_mode():
        reference = load_checkpoint(trained_checkpoint).model(torch.from_numpy(pixels)).numpy()
    assert compare(reference, parse_infer_response(h, out), Tolerance.for_dtype("fp32", atol=1e-3, rtol=1e-3)).passed
