"""int8 vs float32 in ONNX Runtime, in process: images/s and the speed-up, measured in one run.

For each model, a float32 and an int8 ONNX are made by elunet's own export
code and run by elunet's ONNX Runtime engine (elunet.runtime, the CPU
provider, the session options `elunet serve` uses) at each batch size. Rounds
alternate float32 and int8 so that a change in the machine's load hits both;
the medians over the rounds are printed, and the load average beside them.

- ``--checkpoint ARCH=RUN``: that architecture is a trained checkpoint,
  exported with `elunet export` (fp32, and int8 calibrated on real training
  images and gated on the whole test split; the gate's figures are printed).
- otherwise the architecture is a freshly initialised network (seed 0),
  quantized on synthetic uniform pixels: its speed is real, its accuracy
  means nothing (elu-cifar11 has no CIFAR data on the build machine).

    python benchmarks/int8_speed.py --checkpoint fashion-cnn=runs/train     # a trained model: the figures on its docs page
    python benchmarks/int8_speed.py --models elu-cifar11 --seconds 1 --rounds 1   # a quick look
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from elunet.export.parity import DEFAULT_ACCURACY_GATES
from elunet.export.pipeline import export_checkpoint
from elunet.export.quantize import quantize_qdq
from elunet.export.settings import DEFAULT_CALIBRATION_IMAGES, DEFAULT_CALIBRATION_METHOD, ExportSettings
from elunet.export.to_onnx import torch_to_onnx
from elunet.runtime import open_engine
from elunet.runtime.cpus import available_cpus, cpu_name
from elunet.train.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from figures import add_json_option, write_figures  # noqa: E402
from test_export_graph import card_for  # noqa: E402  (the tests' cards of untrained networks: one copy)

INT8 = next(iter(DEFAULT_ACCURACY_GATES))


def trained_models(run: Path, folder: Path) -> dict[str, Path]:
    paths = {}
    for dtype in ("fp32", INT8):
        result = export_checkpoint(run, ExportSettings(dtype=dtype), out=folder / dtype / "model.onnx")
        assert result.passed, "\n".join(result.report.lines())
        paths[dtype] = result.model_path
        gate = result.report.data.get("accuracy_gate")
        if gate:
            print(
                f"  {dtype} gate on {gate['images']} test images: float32 {gate['reference_accuracy']:.2%}, {dtype} "
                f"{gate['runner_accuracy']:.2%} ({gate['accuracy_drop_points']:.2f} points lost), top-1 agreement {gate['top1_agreement']:.2%}"
            )
    return paths


def untrained_models(architecture: str, folder: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    card = card_for(architecture, 1.0)
    fp32 = torch_to_onnx(build_model(card).eval(), card, ExportSettings(dtype=INT8))
    synthetic = np.random.default_rng(0).random((DEFAULT_CALIBRATION_IMAGES, *card.input_shape), dtype=np.float32)
    paths = {"fp32": folder / "fp32.onnx", INT8: folder / f"{INT8}.onnx"}
    onnx.save(fp32, str(paths["fp32"]))
    onnx.save(quantize_qdq(fp32, synthetic, DEFAULT_CALIBRATION_METHOD), str(paths[INT8]))
    print(f"  untrained {architecture}, {INT8} calibrated on {len(synthetic)} synthetic uniform images: speed only")
    return paths


def images_per_s(instance, x: np.ndarray, seconds: float) -> float:
    instance.infer(x)  # warm-up
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        instance.infer(x)
        done += len(x)
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="fashion-cnn,elu-cifar11")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="ARCH=RUN", help="a trained checkpoint for ARCH")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating float32/int8 rounds; medians are printed")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: the CPUs this process may use)")
    add_json_option(parser, __file__)
    args = parser.parse_args()
    checkpoints = dict(c.split("=", 1) for c in args.checkpoint)
    threads = args.threads or available_cpus()
    batches = [int(b) for b in args.batches.split(",")]
    print(f"ONNX Runtime CPU on {cpu_name()}, {threads} intra-op thread(s), {args.rounds} rounds of {args.seconds:g} s; load average {os.getloadavg()[0]:.1f}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for architecture in args.models.split(","):
            print(f"\n{architecture}:")
            folder = Path(tmp) / architecture
            folder.mkdir()
            paths = trained_models(Path(checkpoints[architecture]), folder) if architecture in checkpoints else untrained_models(architecture, folder)
            engines = {d: open_engine("onnxruntime", p, device="cpu", cpu_threads=threads) for d, p in paths.items()}
            instances = {d: e.create_instance() for d, e in engines.items()}
            shape = engines["fp32"].input.dims
            for batch in batches:
                x = np.random.default_rng(batch).random((batch, *shape), dtype=np.float32)
                rounds = [{d: images_per_s(instances[d], x, args.seconds) for d in paths} for _ in range(args.rounds)]
                speed = {d: statistics.median(r[d] for r in rounds) for d in paths}
                ratio = statistics.median(r[INT8] / r["fp32"] for r in rounds)
                rows.append({"model": architecture, "weights": "trained" if architecture in checkpoints else "untrained", "batch": batch,
                             "fp32_images_per_s": speed["fp32"], f"{INT8}_images_per_s": speed[INT8], f"{INT8}_over_fp32": ratio})
                print(f"  batch {batch:>3}: fp32 {speed['fp32']:8.0f} img/s, {INT8} {speed[INT8]:8.0f} img/s, x{ratio:.2f}  (load average {os.getloadavg()[0]:.1f})")
            for engine in engines.values():
                engine.close()
    write_figures(args.json, {"threads": threads, "rounds": args.rounds, "seconds": args.seconds, "measurements": rows})


if __name__ == "__main__":
    main()
