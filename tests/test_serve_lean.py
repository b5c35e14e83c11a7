"""`elunet.serve` runs in a serving image without PyTorch (or onnx): proved with an import blocker."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKED = ("torch", "onnx", "onnxscript", "safetensors", "tensorrt")

SCRIPT = textwrap.dedent(
    """
    import sys

    BLOCKED = {blocked!r}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: lean serving image)", name=name)
            return None

    sys.meta_path.insert(0, Blocker())

    import numpy as np
    from fastapi.testclient import TestClient

    import elunet.cli  # `elunet --help` imports every stage's CLI
    from elunet.serve.app import create_app
    from elunet.serve.settings import load_settings

    app = create_app(load_settings({{"repository": {repository!r}, "backend": "auto", "allow_unverified": True}}, environ={{}}))
    with TestClient(app) as client:
        for _ in range(200):
            if client.get("/v2/health/ready").status_code == 200:
                break
            import time; time.sleep(0.05)
        x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
        r = client.post("/v2/models/synthetic-linear/infer", json={{"inputs": [
            {{"name": "input", "shape": [3, 1, 8, 8], "datatype": "FP32", "data": x.ravel().tolist()}}]}})
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["shape"] == [3, 10]
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("LEAN-OK")
    """
)


def test_serve_imports_and_infers_without_torch(synthetic_repository):
    script = SCRIPT.format(blocked=BLOCKED, repository=str(synthetic_repository))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "LEAN-OK" in r.stdout, r.stdout + r.stderr[-3000:]


def test_elunet_help_works_without_torch():
    script = (
        "import sys\n"
        f"class B:\n def find_spec(self, n, p=None, t=None):\n  assert n.split('.')[0] not in {BLOCKED!r}, n\n"
        "sys.meta_path.insert(0, B())\nsys.argv=['elunet','serve','--help']\nfrom elunet.cli import main\nmain()\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--max-batch-size" in r.stdout, r.stderr[-2000:]
