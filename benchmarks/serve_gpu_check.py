"""GPU check of the serving stage: the torch backend on CUDA, served over HTTP.

1. parity: logits served by `elunet serve --backend torch --device cuda` vs the
   same checkpoint in PyTorch float32 on the CPU, within the fp32 export
   tolerance (elunet.export.parity), for requests of 1..64 images;
2. throughput: benchmarks/serve_load.py on that server (batched vs batch 1,
   and the raw backend), 64 clients.

Runs where PyTorch has CUDA; needs neither onnx nor onnxruntime: the model is
a freshly initialised fashion-cnn checkpoint written as a repository version
folder (card.json + model.safetensors, which the torch backend loads). Inputs
are synthetic random pixels (the dataset need not be on the GPU machine).

    python benchmarks/serve_gpu_check.py [--duration 10]
    python benchmarks/serve_gpu_check.py --device cpu   # the same check on the CPU (a dry run)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from figures import add_json_option, read_figures, write_figures  # noqa: E402
from fixtures_serve import ServerProcess, binary_infer_body, http, parse_infer_response  # noqa: E402

MODEL = "fashion-cnn"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run of the script)")
    add_json_option(parser, __file__)
    args = parser.parse_args()

    import torch

    from elunet.export.parity import Tolerance, compare
    from elunet.train.checkpoint import load_checkpoint, save_checkpoint
    from elunet.train.data import FASHION_MNIST_LABELS
    from elunet.train.models import build_model, describe_model

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("PyTorch sees no CUDA GPU: nothing to check")
        return 1
    with tempfile.TemporaryDirectory(prefix="serve-gpu-") as tmp:
        repository = Path(tmp) / "repository"
        card = describe_model(
            name=MODEL, architecture=MODEL, activation="elu", alpha=1.0, batch_norm=False, dataset="fashion-mnist",
            labels=FASHION_MNIST_LABELS, input_shape=(1, 28, 28), normalization="meanstd",
        )
        save_checkpoint(repository / MODEL / "1", build_model(card), card)
        pixels = np.random.default_rng(0).random((256, 1, 28, 28), dtype=np.float32)  # synthetic inputs
        with torch.inference_mode():
            reference = load_checkpoint(repository / MODEL / "1").model(torch.from_numpy(pixels)).numpy()

        # A checkpoint-only repository: no exported file, so no parity certificate to check.
        server = ServerProcess(repository, Path(tmp) / "server.log", backend="torch", device=args.device, max_batch_size=64,
                               allow_unverified=True).wait_ready(300)
        try:
            cuts = [0, 1, 8, 21, 85, 149, 213, 256]
            served = []
            for a, b in zip(cuts, cuts[1:]):
                body, headers = binary_infer_body(pixels[a:b])
                status, h, out = http("POST", f"{server.url}/v2/models/{MODEL}/infer", body, headers)
                assert status == 200, out
                served.append(parse_infer_response(h, out))
            _, meta = server.get_json(f"/v2/models/{MODEL}")
        finally:
            server.stop()
        result = compare(reference, np.concatenate(served), Tolerance.for_dtype("fp32"))
        print(f"served on {meta['platform']}")
        print(f"torch-{args.device} served vs torch-CPU reference, 256 synthetic images: max abs err {result.max_abs_err:.2e}, "
              f"max rel err {result.max_rel_err:.2e}, top-1 agreement {result.top1_agreement:.4f} -> {'PASSED' if result.passed else 'FAILED'}")
        load = subprocess.run(
            [sys.executable, str(HERE / "serve_load.py"), "--repository", str(repository), "--model", MODEL, "--backend", "torch", "--allow-unverified",
             "--device", args.device, "--clients", "64", "--duration", str(args.duration), "--json", str(Path(tmp) / "load.json")],
            check=False,
        )
        load_figures = read_figures(Path(tmp) / "load.json") if load.returncode == 0 else None
    write_figures(args.json, {"device": args.device, "served_on": meta["platform"], "parity": {
        "images": len(pixels), "max_abs_err": result.max_abs_err, "max_rel_err": result.max_rel_err, "top1_agreement": result.top1_agreement,
        "passed": result.passed}, "load": load_figures})
    return 0 if result.passed and load.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
