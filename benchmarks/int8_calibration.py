"""The measurement behind `elunet export --dtype int8`'s calibration defaults (method, number of images).

One trained checkpoint, traced once; for each calibration method and number
of training images, the graph is quantized by elunet's own code (the seeded
random training images the export uses) and judged by the export's accuracy
gate on the whole test split, against the checkpoint's float32 PyTorch
network computed once. Prints the accuracy lost, the top-1 agreement, and the
seconds the quantization took, all in this one run.

    python benchmarks/int8_calibration.py runs/train
    python benchmarks/int8_calibration.py runs/train --methods minmax --images 64,512
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from elunet.export.parity import DEFAULT_ACCURACY_GATES, judge_accuracy
from elunet.export.quantize import CALIBRATION_SEED, quantize_qdq
from elunet.export.real_data import random_train_pixels, real_test_pixels
from elunet.export.settings import CALIBRATION_METHODS, ExportSettings
from elunet.export.to_onnx import torch_to_onnx
from elunet.runtime import open_engine
from elunet.train.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from figures import add_json_option, write_figures  # noqa: E402

INT8, GATE = next(iter(DEFAULT_ACCURACY_GATES.items()))
BATCH = 500


def logits(kind: str, path: Path, pixels: np.ndarray) -> np.ndarray:
    with open_engine(kind, path, device="cpu") as engine:
        instance = engine.create_instance()
        return np.concatenate([instance.infer(pixels[i : i + BATCH]) for i in range(0, len(pixels), BATCH)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--methods", default=",".join(CALIBRATION_METHODS))
    parser.add_argument("--images", default="64,128,256,512,1024,2048", help="numbers of calibration images")
    parser.add_argument("--data-dir", type=Path)
    add_json_option(parser, __file__)
    args = parser.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    pixels, targets = real_test_pixels(ckpt.card, None, args.data_dir)
    reference = logits("torch", ckpt.path, pixels)
    proto = torch_to_onnx(ckpt.model, ckpt.card, ExportSettings(dtype=INT8))
    print(f"{ckpt.card.name} from {ckpt.path}: float32 test accuracy {np.mean(reference.argmax(1) == targets):.2%} on {len(targets)} images; "
          f"gate: at most {GATE.max_accuracy_drop_points:g} points lost, top-1 agreement >= {GATE.min_top1_agreement:.0%}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'method':<11}{'images':>7}{'accuracy':>10}{'lost':>7}{'agreement':>11}{'seconds':>9}  gate")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            for count in (int(n) for n in args.images.split(",")):
                calibration = random_train_pixels(ckpt.card, count, CALIBRATION_SEED, args.data_dir, "calibration")
                start = time.perf_counter()
                quantized = quantize_qdq(proto, calibration, method)
                seconds = time.perf_counter() - start
                path = Path(tmp) / f"{method}-{count}.onnx"
                onnx.save(quantized, str(path))
                v = judge_accuracy(GATE, targets, reference, logits("onnxruntime", path, pixels))
                print(f"{method:<11}{count:>7}{v['runner_accuracy']:>10.2%}{v['accuracy_drop_points']:>7.2f}{v['top1_agreement']:>11.2%}"
                      f"{seconds:>9.1f}  {'passed' if v['passed'] else 'FAILED'}", flush=True)
                rows.append({"method": method, "images": count, "accuracy": v["runner_accuracy"], "points_lost": v["accuracy_drop_points"],
                             "top1_agreement": v["top1_agreement"], "seconds": seconds, "gate": "passed" if v["passed"] else "failed"})
    write_figures(args.json, {"model": ckpt.card.name, "float32_accuracy": float(np.mean(reference.argmax(1) == targets)),
                              "test_images": len(targets), "gate": GATE.model_dump(), "calibrations": rows})


if __name__ == "__main__":
    main()
