"""Closed-loop load on `elunet serve` over loopback, and what the backend alone could do.

N clients each send one binary V2 request of one image, wait for the answer,
and send the next (closed loop). One run measures:

  (a) raw:       the engine in-process, no HTTP, opened and driven like the server's (one
                 thread per instance) at the batch size the server formed in (b), and at batch 1
                 (raw(b)/raw(1) is the most batching can gain on compute alone)
  (b) batched:   the server with dynamic batching (--max-batch-size)
  (c) unbatched: the same server with max batch size 1

and prints throughput (images/s), p50/p95/p99 latency, mean batch size, and
the ratios served/raw = (b)/(a) and batched/unbatched = (b)/(c).

    python benchmarks/serve_load.py --model fashion-cnn --clients 64
    python benchmarks/serve_load.py --model elu-cifar11 --clients 16
    python benchmarks/serve_load.py --repository DIR --model NAME   # an existing repository

Without --repository, a freshly initialised (untrained) network of the given
architecture is exported into a temporary repository: speed does not depend
on the weights. The clients run in this process (threads, one keep-alive
connection each) on the same CPUs as the server: on a small machine they
compete with it, which the figures include.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from figures import add_json_option, write_figures  # noqa: E402
from fixtures_serve import ServerProcess, binary_infer_body  # noqa: E402  (the tests' launcher: one copy)

from elunet.model_config import DEFAULT_MAX_QUEUE_DELAY_US  # noqa: E402
from elunet.repository import ModelRepository  # noqa: E402
from elunet.serve.settings import AUTO_INSTANCES  # noqa: E402

# What each architecture trains on (input shape, dataset, normalization) when the benchmark makes the model.
ARCHITECTURES = {
    "fashion-cnn": ((1, 28, 28), "fashion-mnist", "meanstd"),
    "elu-cifar11": ((3, 32, 32), "cifar-100", "gcn+zca"),
}


@dataclass
class Load:
    images_per_s: float
    latencies_ms: np.ndarray
    mean_batch: float
    errors: int

    def percentiles_ms(self) -> tuple[float, float, float]:
        return tuple(np.percentile(self.latencies_ms, [50, 95, 99])) if len(self.latencies_ms) else (np.nan,) * 3

    def row(self, name: str) -> str:
        p50, p95, p99 = self.percentiles_ms()
        return f"{name:<26}{self.images_per_s:>10.1f}{p50:>9.2f}{p95:>9.2f}{p99:>9.2f}{self.mean_batch:>11.2f}{self.errors:>8}"

    def record(self, name: str) -> dict:
        p50, p95, p99 = (float(p) for p in self.percentiles_ms())
        return {"phase": name, "images_per_s": self.images_per_s, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "mean_batch": self.mean_batch,
                "errors": self.errors}


def make_repository(architecture: str, root: Path) -> Path:
    """Export a freshly initialised network of ``architecture`` into ``root`` (needs the train/export extras)."""
    from elunet.export.pipeline import export_checkpoint
    from elunet.export.settings import ExportSettings
    from elunet.train.checkpoint import save_checkpoint
    from elunet.train.models import build_model, describe_model

    shape, dataset, normalization = ARCHITECTURES[architecture]
    card = describe_model(
        name=architecture, architecture=architecture, activation="elu", alpha=1.0, batch_norm=False, dataset=dataset,
        labels=[f"class-{i}" for i in range(100 if dataset == "cifar-100" else 10)], input_shape=shape, normalization=normalization,
    )
    checkpoint = root / "checkpoint"
    save_checkpoint(checkpoint, build_model(card), card)
    repository = root / "repository"
    export_checkpoint(checkpoint, ExportSettings(), repository=repository, skip_verify=True)
    return repository


def batch_totals(url: str, model: str) -> tuple[float, float]:
    """(batches, images) computed so far: Triton's nv_inference_exec_count and nv_inference_count."""
    conn = HTTPConnection(url.removeprefix("http://"), timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    values = {}
    for family in ("nv_inference_exec_count", "nv_inference_count"):
        m = re.search(rf'^{family}{{model="{re.escape(model)}",version="\d+"}} (\S+)$', text, re.M)
        values[family] = float(m.group(1)) if m else 0.0
    return values["nv_inference_exec_count"], values["nv_inference_count"]


def served_instances(url: str, model: str) -> int:
    """The instances the server runs the model on (its count may be its own choice), from the config endpoint."""
    conn = HTTPConnection(url.removeprefix("http://"), timeout=30)
    conn.request("GET", f"/v2/models/{model}/config")
    config = json.loads(conn.getresponse().read())
    conn.close()
    return instance_count(config)


def instance_count(config: dict) -> int:
    """The instances a served ModelConfig (as JSON) names, over all its groups."""
    return sum(int(group.get("count", 1)) for group in config.get("instance_group", [])) or 1


def closed_loop(url: str, model: str, image: np.ndarray, clients: int, warmup_s: float, duration_s: float) -> Load:
    body, headers = binary_infer_body(image[None])
    host = url.removeprefix("http://")
    path = f"/v2/models/{model}/infer"
    start_measure = time.monotonic() + warmup_s
    stop = start_measure + duration_s
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    marks = {}

    def client(k: int) -> None:
        conn = HTTPConnection(host, timeout=120)
        while True:
            t0 = time.monotonic()
            if t0 >= stop:
                break
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            response.read()
            t1 = time.monotonic()
            if t0 >= start_measure and t1 <= stop:
                if response.status == 200:
                    latencies[k].append((t1 - t0) * 1000)
                else:
                    errors[k] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, start_measure - time.monotonic()))
    marks["start"] = batch_totals(url, model)
    time.sleep(max(0.0, stop - time.monotonic()))
    marks["stop"] = batch_totals(url, model)
    for t in threads:
        t.join()
    done = np.array([x for per_client in latencies for x in per_client])
    batches = marks["stop"][0] - marks["start"][0]
    images = marks["stop"][1] - marks["start"][1]
    return Load(len(done) / duration_s, done, images / batches if batches else float("nan"), sum(errors))


def set_scheduling(repository: Path, name: str, *, max_batch_size: int | None = None, instances: int | None = None,
                   delay_us: int | None = None) -> None:
    """Rewrite the model's config.pbtxt, as a user tunes a model (it overrides the server's options)."""
    from elunet.model_config import config_text, model_config_pb2, read_config
    from elunet.repository import CONFIG_FILE

    path = repository / name / CONFIG_FILE
    config = read_config(path) if path.is_file() else model_config_pb2().ModelConfig(name=name)  # e.g. a checkpoint-only model
    config.dynamic_batching.SetInParent()
    if max_batch_size is not None:
        config.max_batch_size = max_batch_size
    if instances is not None:
        del config.instance_group[:]
        if instances != AUTO_INSTANCES:  # else no instance_group: the server chooses
            config.instance_group.add(count=instances)
    if delay_us is not None:
        config.dynamic_batching.max_queue_delay_microseconds = delay_us
    path.write_text(config_text(config))


def raw_engine(version_dir: Path, backend: str, device: str, batch: int, image: np.ndarray, duration_s: float, instances: int) -> Load:
    """The engine alone, opened as the server opens it, each instance driven by its own thread like the server's."""
    from elunet.runtime import open_engine
    from elunet.runtime.choose import choose_engine
    from elunet.runtime.cpus import threads_per_instance

    repository = ModelRepository(version_dir.parent.parent)
    version = repository.get(version_dir.parent.name, int(version_dir.name))
    choice = choose_engine(version, backend, device)
    engine = open_engine(choice.kind, choice.path, device=choice.device, cpu_threads=threads_per_instance(instances), max_batch_size=batch)
    models = [engine.create_instance() for _ in range(instances)]
    x = np.repeat(image[None], batch, axis=0)
    for model in models:
        for _ in range(3):
            model.infer(x)
    latencies: list[list[float]] = [[] for _ in range(instances)]
    t_end = time.monotonic() + duration_s

    def worker(k: int) -> None:
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            models[k].infer(x)
            latencies[k].append((time.monotonic() - t0) * 1000)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(instances)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    engine.close()
    done = np.concatenate([np.array(per) for per in latencies])
    return Load(batch * len(done) / elapsed, done, float(batch), 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fashion-cnn", help="architecture to make (without --repository) or model name in it")
    parser.add_argument("--repository", type=Path, help="an existing model repository (default: export a fresh network)")
    parser.add_argument("--allow-unverified", action="store_true", help="serve --repository's versions without parity certificates too")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-queue-delay-ms", type=float, default=DEFAULT_MAX_QUEUE_DELAY_US / 1000)
    parser.add_argument("--instances", type=int, default=AUTO_INSTANCES,
                        help="model instances (config.pbtxt instance_group); 0: none there, the server's automatic count")
    parser.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch", "tensorrt"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per phase")
    add_json_option(parser, __file__)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        tmp = Path(tmp)
        repository = args.repository or make_repository(args.model, tmp)
        version = ModelRepository(repository).get(args.model)
        card = version.card
        image = np.random.default_rng(0).random(card.input_shape, dtype=np.float32)
        # The benchmark's freshly initialised networks are exported without verification.
        common = dict(backend=args.backend, device=args.device, max_queue_size=max(1024, 4 * args.clients),
                      allow_unverified=args.allow_unverified or args.repository is None)
        results = {}
        raw_runs = []
        # Raw runs right after each server phase, averaged: on a shared host the load of other
        # processes drifts, and (a) must see the same conditions as (b).
        for phase, max_batch in (("batched", args.max_batch_size), ("unbatched", 1)):
            set_scheduling(repository, args.model, max_batch_size=max_batch, instances=args.instances,
                           delay_us=round(args.max_queue_delay_ms * 1000))
            server = ServerProcess(repository, tmp / f"{phase}.log", **common).wait_ready(300)
            try:
                results[phase] = closed_loop(server.url, args.model, image, args.clients, args.warmup, args.duration)
                instances = served_instances(server.url, args.model)
            finally:
                server.stop()
            formed = max(1, round(results["batched"].mean_batch))
            raw_runs.append(raw_engine(version.path, args.backend, args.device, formed, image, args.duration / 2, instances))
        results["raw1"] = raw_engine(version.path, args.backend, args.device, 1, image, args.duration / 2, instances)
        results["raw"] = Load(
            float(np.mean([r.images_per_s for r in raw_runs])), np.concatenate([r.latencies_ms for r in raw_runs]), float(formed), 0
        )

    print(f"\nmodel {args.model} ({card.architecture}, input {card.input_shape}), backend {args.backend} on {args.device}, "
          f"{args.clients} clients, 1 image per request, max queue delay {args.max_queue_delay_ms:g} ms, {instances} instance(s)")
    print(f"{'phase':<26}{'images/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'mean batch':>11}{'errors':>8}")
    phases = {"raw": f"(a) raw engine, batch {formed}", "raw1": "(a) raw engine, batch 1", "batched": f"(b) server, max batch {args.max_batch_size}",
              "unbatched": "(c) server, max batch 1"}
    for key, name in phases.items():
        print(results[key].row(name) + (f"   (runs: {', '.join(f'{r.images_per_s:.1f}' for r in raw_runs)})" if key == "raw" else ""))
    served_raw = results["batched"].images_per_s / results["raw"].images_per_s
    batched_unbatched = results["batched"].images_per_s / results["unbatched"].images_per_s
    ceiling = results["raw"].images_per_s / results["raw1"].images_per_s
    print(f"served/raw = {served_raw:.2f}   batched/unbatched = {batched_unbatched:.2f}   "
          f"(compute-only batching gain raw(batch {formed})/raw(batch 1) = {ceiling:.2f})")
    write_figures(args.json, {"model": args.model, "backend": args.backend, "device": args.device, "clients": args.clients,
                              "instances": instances, "duration_s": args.duration, "phases": [results[k].record(n) for k, n in phases.items()],
                              "served_over_raw": served_raw, "batched_over_unbatched": batched_unbatched, "raw_batching_gain": ceiling})
    return 0


if __name__ == "__main__":
    sys.exit(main())
