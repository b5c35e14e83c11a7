"""What Triton's meaning of ``dynamic_batching {}`` (no queue delay) is worth to one client.

One server serves the synthetic model twice: with ``dynamic_batching {}`` (Triton's 0 delay, which elunet
read as its 2 ms default before) and with ``max_queue_delay_microseconds: 2000`` (that old reading,
written out). One client sends binary V2 requests of one image, one at a time, to each in turn; the
figures are the median latencies and their ratio, and the server-side queue time per request from
Triton's statistics.

    python benchmarks/serve_empty_batching.py --requests 300
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from figures import add_json_option, write_figures  # noqa: E402
from fixtures_serve import LINEAR, SYNTHETIC_SHAPE, ServerProcess, binary_infer_body, http, make_synthetic_repository, synthetic_card  # noqa: E402

from elunet.model_config import build_config, config_text  # noqa: E402

CONFIGS = {"empty": "dynamic_batching {}", "delay_2ms": "dynamic_batching { max_queue_delay_microseconds: 2000 }"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per model and round")
    parser.add_argument("--rounds", type=int, default=3)
    add_json_option(parser, __file__)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repository"
        source = make_synthetic_repository(Path(tmp) / "synthetic", faulty=False) / LINEAR
        for name, batching in CONFIGS.items():
            shutil.copytree(source, root / name)
            config = build_config(synthetic_card(name), name=name, platform="onnxruntime_onnx", max_batch_size=8)
            config.ClearField("dynamic_batching")
            (root / name / "config.pbtxt").write_text(config_text(config) + batching)
        server = ServerProcess(root, Path(tmp) / "server.log", allow_unverified=True, instances=1).wait_ready()
        try:
            body, headers = binary_infer_body(np.zeros((1, *SYNTHETIC_SHAPE), np.float32))
            latencies: dict[str, list[float]] = {name: [] for name in CONFIGS}
            for _ in range(args.rounds):
                for name in CONFIGS:
                    for _ in range(args.requests):
                        started = time.perf_counter()
                        assert http("POST", f"{server.url}/v2/models/{name}/infer", body, headers)[0] == 200
                        latencies[name].append(time.perf_counter() - started)
            queue_us = {}
            for name in CONFIGS:
                stats = json.loads(http("GET", f"{server.url}/v2/models/{name}/stats")[2])["model_stats"][0]["inference_stats"]
                queue_us[name] = stats["queue"]["ns"] / stats["queue"]["count"] / 1000
        finally:
            server.stop()
    medians_ms = {name: 1000 * statistics.median(values) for name, values in latencies.items()}
    ratio = medians_ms["delay_2ms"] / medians_ms["empty"]
    for name in CONFIGS:
        print(f"{name:>10}: median {medians_ms[name]:.2f} ms per request, {queue_us[name]:.0f} us of it queued (server statistics)")
    print(f"dynamic_batching {{}} answers one client {ratio:.2f}x faster than the 2 ms delay it was read as before")
    write_figures(args.json, {"requests": args.requests * args.rounds, "median_ms": medians_ms, "queue_us_per_request": queue_us,
                              "speedup": ratio})


if __name__ == "__main__":
    main()
