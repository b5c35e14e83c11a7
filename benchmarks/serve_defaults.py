"""The benchmark behind `elunet serve`'s scheduling defaults: instances, intra-op threads, queue delay.

For each model (a freshly initialised network of the architecture, exported into a temporary
repository, float32 and int8: speed does not depend on the weights; the int8 one calibrated on
synthetic images, so its answers mean nothing) and each variant, one real `elunet serve` on 127.0.0.1
serving that model alone, with the variant written into the model's config.pbtxt (instance_group
count, or none: the server's automatic count; max_queue_delay_microseconds) and the server's
--cpu-threads, loaded by wrk (a separate process) with V2 JSON requests of one image. Prints
requests/s, p50, p99 per variant and the ratio to the current defaults, all measured in this one run.

    python benchmarks/serve_defaults.py                       # both models, both dtypes, 10 s per variant
    python benchmarks/serve_defaults.py --duration 3 --models fashion-cnn --dtypes int8   # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from figures import add_json_option, write_figures  # noqa: E402
from fixtures_serve import ServerProcess  # noqa: E402  (the tests' launcher: one copy)
from int8_served import DTYPES, untrained_repository  # noqa: E402
from serve_load import served_instances, set_scheduling  # noqa: E402
from wrk_load import wrk  # noqa: E402

from elunet.model_config import DEFAULT_MAX_QUEUE_DELAY_US  # noqa: E402
from elunet.repository import ModelRepository  # noqa: E402
from elunet.runtime.cpus import available_cpus, cpu_name  # noqa: E402
from elunet.serve.settings import AUTO_INSTANCES  # noqa: E402

# (instances (0: the server's automatic count), cpu threads per instance (0: the server's share), queue delay in microseconds)
VARIANTS = [(1, 0, 2000), (1, 1, 2000), (2, 0, 0), (2, 0, 2000), (2, 0, 5000), (3, 0, 2000), (0, 0, 0), (0, 0, 5000)]
DEFAULT = (AUTO_INSTANCES, 0, DEFAULT_MAX_QUEUE_DELAY_US)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="fashion-cnn,elu-cifar11")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="fp32, int8 or both")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per variant")
    parser.add_argument("--connections", type=int, default=64)
    add_json_option(parser, __file__)
    args = parser.parse_args()
    print(f"{cpu_name()}, {available_cpus()} CPU(s); wrk -c{args.connections} for {args.duration:g} s per variant; V2 JSON, 1 image per request")
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for architecture in args.models.split(","):
            repository = untrained_repository(architecture, Path(tmp) / architecture)
            for dtype in args.dtypes.split(","):
                models[f"{architecture}-{dtype}"] = measure(repository, f"{architecture}-{dtype}", Path(tmp), args)
    write_figures(args.json, {"connections": args.connections, "duration_s": args.duration, "models": models})


def measure(repository: Path, name: str, tmp: Path, args) -> list[dict]:
    version = ModelRepository(repository).get(name)
    x = np.random.default_rng(0).random((1, *version.card.input_shape), dtype=np.float32)
    body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}).encode()
    results, counts = {}, {}
    for variant in sorted(set(VARIANTS) | {DEFAULT}):
        instances, threads, delay = variant
        set_scheduling(repository, name, instances=instances, delay_us=delay)
        server = ServerProcess(repository, tmp / f"{name}-{instances}-{threads}-{delay}.log", models=name, cpu_threads=threads,
                               allow_unverified=True, log_level="warning").wait_ready(300)
        try:
            results[variant] = wrk(f"{server.url}/v2/models/{name}/infer", body, {"Content-Type": "application/json"},
                                   connections=args.connections, duration_s=args.duration)
            counts[variant] = served_instances(server.url, name)
        finally:
            server.stop()
    base = results[DEFAULT].requests_per_s
    print(f"\n{name}:")
    for (instances, threads, delay), r in results.items():
        mark = "  <- default" if (instances, threads, delay) == DEFAULT else ""
        served = f"auto: {counts[instances, threads, delay]}" if instances == AUTO_INSTANCES else str(instances)
        label = f"{served} instance(s), {threads or 'auto'} thread(s), delay {delay / 1000:g} ms"
        print(f"  {label:<44}{r.cells()}  x{r.requests_per_s / base:.2f}{mark}", flush=True)
    best = max(results, key=lambda v: results[v].requests_per_s)
    print(f"  fastest: {best} at x{results[best].requests_per_s / base:.2f} of the default")
    return [{"instances": "auto" if i == AUTO_INSTANCES else i, "served_instances": counts[i, t, d], "cpu_threads": t or "auto", "delay_ms": d / 1000,
             "requests_per_s": r.requests_per_s, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "over_default": r.requests_per_s / base,
             "default": (i, t, d) == DEFAULT} for (i, t, d), r in results.items()]


if __name__ == "__main__":
    main()
