"""int8 vs float32 served: requests/s of one network exported both ways, behind one `elunet serve`, in one run.

For each model, a repository with two models, ARCH-fp32 and ARCH-int8, served with the server's defaults
(the same config.pbtxt and batching; instances counted by the server for each, as it counts them for any model
whose config.pbtxt has no instance_group, printed):

- ``--checkpoint ARCH=RUN``: `elunet export` of that trained run as fp32 and as int8 (calibrated on real
  training images; the int8 accuracy gate on the whole test split must pass, its figures are printed);
- otherwise a freshly initialised network (seed 0) exported as fp32, and its int8 QDQ made by elunet's
  quantizer calibrated on 512 **synthetic** uniform images: its speed is real, its accuracy means nothing
  (there is no CIFAR data on the build machine, so elu-cifar11 cannot be calibrated on real images here).

Each served model is first checked to answer its own ONNX file's logits (ONNX Runtime here, atol 1e-4); then
wrk drives each model in turn with one V2 JSON image per request (and the binary tensor extension),
in alternating rounds (fp32, int8, then int8, fp32, ...) so that a drift in the machine's load hits
both; the medians are printed with the int8/fp32 ratios and the issue's targets. Beside them, elunet's
ONNX Runtime engine alone (a process of its own, laid out as served) at the batch size the server formed.

    python benchmarks/int8_served.py                                   # both models, 3 rounds of 10 s
    python benchmarks/int8_served.py --short     # fashion-cnn, one round of 2 s: does it all run?
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from fixtures_serve import binary_infer_body, free_port, http  # noqa: E402
from serve_load import batch_totals, make_repository, served_instances  # noqa: E402
from serve_peers import Service, check_json_answer, onnx_logits, raw_in_own_session  # noqa: E402
from figures import add_json_option, write_figures  # noqa: E402
from wrk_load import wrk  # noqa: E402

from elunet.export.parity import DEFAULT_ACCURACY_GATES  # noqa: E402
from elunet.export.pipeline import export_checkpoint  # noqa: E402
from elunet.export.quantize import quantize_qdq  # noqa: E402
from elunet.export.settings import DEFAULT_CALIBRATION_IMAGES, DEFAULT_CALIBRATION_METHOD, ExportSettings  # noqa: E402
from elunet.model_config import config_text, read_config  # noqa: E402
from elunet.repository import CONFIG_FILE, ModelRepository  # noqa: E402
from elunet.runtime.cpus import available_cpus, cpu_name  # noqa: E402

INT8 = next(iter(DEFAULT_ACCURACY_GATES))
DTYPES = ("fp32", INT8)
# The targets: int8 served requests/s over float32 served, same model, same run.
TARGETS = {"elu-cifar11": 1.8, "fashion-cnn": 1.3}


def trained_repository(architecture: str, run: Path, root: Path) -> Path:
    repository = root / "repository"
    for dtype in DTYPES:
        result = export_checkpoint(run, ExportSettings(dtype=dtype), repository=repository, name=f"{architecture}-{dtype}")
        assert result.passed, "\n".join(result.report.lines())
        gate = result.report.data.get("accuracy_gate")
        if gate:
            print(f"  {dtype} gate on {gate['images']} test images: float32 {gate['reference_accuracy']:.2%}, {dtype} "
                  f"{gate['runner_accuracy']:.2%} ({gate['accuracy_drop_points']:.2f} points lost), top-1 agreement {gate['top1_agreement']:.2%}")
    return repository


def untrained_repository(architecture: str, root: Path) -> Path:
    """ARCH-fp32 as `elunet export` writes it, and ARCH-int8 the same folder with the quantized model.onnx."""
    repository = make_repository(architecture, root)
    fp32, int8 = repository / f"{architecture}-fp32", repository / f"{architecture}-{INT8}"
    (repository / architecture).rename(fp32)
    shutil.copytree(fp32, int8)
    for folder in (fp32, int8):
        config = read_config(folder / CONFIG_FILE)
        config.name = folder.name
        (folder / CONFIG_FILE).write_text(config_text(config))
    version = ModelRepository(repository).get(fp32.name)
    synthetic = np.random.default_rng(0).random((DEFAULT_CALIBRATION_IMAGES, *version.card.input_shape), dtype=np.float32)
    model = int8 / str(version.version) / "model.onnx"
    onnx.save(quantize_qdq(onnx.load(str(model)), synthetic, DEFAULT_CALIBRATION_METHOD), str(model))
    print(f"  untrained {architecture}, {INT8} calibrated on {len(synthetic)} synthetic uniform images: speed only")
    return repository


def measure(architecture: str, repository: Path, tmp: Path, args) -> dict[str, float]:
    names = {dtype: f"{architecture}-{dtype}" for dtype in DTYPES}
    version = ModelRepository(repository).get(names["fp32"])
    image = np.random.default_rng(0).random((1, *version.card.input_shape), dtype=np.float32)
    bodies = {
        "JSON": (json.dumps({"inputs": [{"name": "input", "shape": list(image.shape), "datatype": "FP32", "data": image.ravel().tolist()}]}).encode(),
                 {"Content-Type": "application/json"}),
        "binary": binary_infer_body(image),
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = Service([sys.executable, "-m", "elunet", "serve", "--repository", str(repository), "--host", "127.0.0.1", "--port", str(port),
                      "--grpc-port", str(free_port()), "--allow-unverified", "true"], tmp / f"{architecture}-serve.log", f"{url}/v2/health/ready", tmp)
    runs: dict[tuple[str, str], list] = {}
    formed: dict[str, list[float]] = {dtype: [] for dtype in DTYPES}
    try:
        for dtype in DTYPES:
            onnx_file = ModelRepository(repository).get(names[dtype]).path / "model.onnx"
            check_json_answer(url, names[dtype], bodies["JSON"][0], onnx_logits(onnx_file, image, available_cpus()))
        for r in range(args.rounds):
            for dtype in DTYPES if r % 2 == 0 else DTYPES[::-1]:
                for protocol, (body, headers) in bodies.items():
                    before = batch_totals(url, names[dtype])
                    result = wrk(f"{url}/v2/models/{names[dtype]}/infer", body, headers, connections=args.connections, duration_s=args.duration)
                    after = batch_totals(url, names[dtype])
                    if result.errors:
                        raise RuntimeError(f"{names[dtype]} {protocol}: {result.errors} errors under load; see {server.log_path}")
                    runs.setdefault((dtype, protocol), []).append(result)
                    formed[dtype].append((after[1] - before[1]) / max(1.0, after[0] - before[0]))
            print(f"  round {r + 1}: " + ", ".join(f"{d} {p} {runs[d, p][-1].requests_per_s:.0f}" for d, p in runs), flush=True)
        instances = {dtype: served_instances(url, names[dtype]) for dtype in DTYPES}
    finally:
        server.stop()
    batch = {dtype: max(1, round(statistics.median(formed[dtype]))) for dtype in DTYPES}
    raw = {dtype: raw_in_own_session(ModelRepository(repository).get(names[dtype]).path, batch[dtype], args.duration / 2, instances[dtype]) for dtype in DTYPES}
    median = {key: {f: statistics.median(getattr(x, f) for x in results) for f in ("requests_per_s", "p50_ms", "p99_ms")} for key, results in runs.items()}
    print(f"\n{architecture}: {args.connections} connections, {args.rounds} round(s) of {args.duration:g} s, medians; "
          f"instances {', '.join(f'{d} {n}' for d, n in instances.items())}; load average {os.getloadavg()[0]:.1f}")
    print(f"  {'':<22}{'requests/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'int8/fp32':>11}")
    for protocol in bodies:
        for dtype in DTYPES:
            m = median[dtype, protocol]
            ratio = m["requests_per_s"] / median["fp32", protocol]["requests_per_s"]
            print(f"  {dtype + ' ' + protocol:<22}{m['requests_per_s']:>11.0f}{m['p50_ms']:>9.1f}{m['p99_ms']:>9.1f}{ratio:>11.2f}")
    for dtype in DTYPES:
        print(f"  raw ONNX Runtime {dtype}, batch {batch[dtype]} (img/s): {raw[dtype]:.0f}; served JSON / raw = "
              f"{median[dtype, 'JSON']['requests_per_s'] / raw[dtype]:.2f}")
    ratio = median[INT8, "JSON"]["requests_per_s"] / median["fp32", "JSON"]["requests_per_s"]
    target = TARGETS.get(architecture)
    print(f"  served {INT8}/fp32 (JSON) = {ratio:.2f}; raw {INT8}/fp32 = {raw[INT8] / raw['fp32']:.2f}"
          + (f" (target >= {target}): {'met' if ratio >= target else 'NOT met'}" if target else ""))
    return {"connections": args.connections, "rounds": args.rounds, "duration_s": args.duration, "instances": instances,
            "runs": [{"dtype": d, "protocol": p, **m, "int8_over_fp32": m["requests_per_s"] / median["fp32", p]["requests_per_s"]}
                     for p in bodies for d in DTYPES for m in [median[d, p]]],
            "raw_images_per_s": {d: {"batch": batch[d], "images_per_s": raw[d], "served_json_over_raw": median[d, "JSON"]["requests_per_s"] / raw[d]}
                                 for d in DTYPES},
            "served_int8_over_fp32": ratio, "raw_int8_over_fp32": raw[INT8] / raw["fp32"], "target": target}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="fashion-cnn,elu-cifar11", help="architectures, comma-separated")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="ARCH=RUN", help="a trained checkpoint for ARCH")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating fp32/int8 rounds; medians are printed")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--short", action="store_true", help="fashion-cnn only, one round of 2 s, no figures recorded: checks that everything runs")
    add_json_option(parser, __file__)
    args = parser.parse_args()
    if args.short:
        args.models, args.duration, args.rounds, args.json = "fashion-cnn", 2.0, 1, None
    checkpoints = dict(c.split("=", 1) for c in args.checkpoint)
    print(f"{cpu_name()}, {available_cpus()} CPU(s), load average {os.getloadavg()[0]:.1f}", flush=True)
    load_before, results = os.getloadavg(), {}
    with tempfile.TemporaryDirectory(prefix="int8-served-") as tmp:
        for architecture in args.models.split(","):
            print(f"{architecture}:", flush=True)
            root = Path(tmp) / architecture
            repository = (trained_repository(architecture, Path(checkpoints[architecture]), root) if architecture in checkpoints
                          else untrained_repository(architecture, root))
            results[architecture] = {"weights": "trained" if architecture in checkpoints else "untrained",
                                     **measure(architecture, repository, Path(tmp), args)}
    write_figures(args.json, {"load_average": {"start": load_before, "end": os.getloadavg()}, "models": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
