"""The serve image's install step, run here outside Docker: deploy/install-serve.sh (what the
Dockerfile's `serve` stage runs) installs the wheel with the GPU build of ONNX Runtime into a fresh
virtualenv, and the server it installs answers the image's health check.

The base image (CUDA runtime) is not here, so ONNX Runtime falls back to its CPU provider at run
time; what this proves is the install: wheel + serve extra, the CPU-to-GPU ONNX Runtime swap, the
CUDA provider present, no PyTorch, a server that starts from the wheel alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from fixtures_deploy import DEPLOY_DIR


@pytest.mark.slow
def test_install_serve_script_makes_a_lean_gpu_server(elunet_wheel, synthetic_repository, tmp_path):
    from fixtures_serve import free_port, http

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    install = subprocess.run(
        ["sh", str(DEPLOY_DIR / "install-serve.sh"), str(elunet_wheel), "serve", "onnxruntime-gpu"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    assert "CUDAExecutionProvider" in install.stdout
    python = str(venv / "bin" / "python")
    assert subprocess.run([python, "-c", "import torch"], env=env, capture_output=True).returncode != 0

    port = free_port()
    server_env = {**env, "ELUNET_REPOSITORY": str(synthetic_repository), "ELUNET_ALLOW_UNVERIFIED": "true", "ELUNET_HOST": "127.0.0.1", "ELUNET_PORT": str(port),
                  "ELUNET_GRPC_PORT": str(free_port())}
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen([str(venv / "bin" / "elunet"), "serve"], env=server_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            check = subprocess.run([python, str(DEPLOY_DIR / "healthcheck.py")], env=server_env, capture_output=True, text=True, timeout=30)
            if check.returncode == 0 or time.monotonic() > deadline or server.poll() is not None:
                break
            time.sleep(0.5)
        assert check.returncode == 0, (tmp_path / "server.log").read_text()[-3000:]
        status, _, body = http("GET", f"http://127.0.0.1:{port}/v2/models/synthetic-linear")
        assert status == 200 and b"onnxruntime" in body
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
