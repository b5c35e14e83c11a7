"""Two checkouts' servers, paired on one host: what a change to the serving code is worth.

Each checkout (a folder with its own ``.venv``, e.g. a ``git worktree`` of the commit before the change)
serves the same freshly exported model in turn, A B A B ..., each started only after every process of
the one before has exited, and wrk drives one V2 JSON request of one image over 64 connections. Alternating
runs keep the host's drift out of the ratio: it is the median of each round's B / A.

    python benchmarks/serve_ab.py --a /work/wt-old --b . --models fashion-cnn,elu-cifar11 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from figures import add_json_option, write_figures  # noqa: E402
from fixtures_serve import free_port  # noqa: E402
from serve_load import make_repository  # noqa: E402
from serve_peers import Service  # noqa: E402
from wrk_load import wrk  # noqa: E402

from elunet.repository import ModelRepository  # noqa: E402


def run_once(checkout: Path, repository: Path, name: str, body: bytes, args, log: Path) -> float:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = Service([str(checkout / ".venv" / "bin" / "python"), "-m", "elunet", "serve", "--repository", str(repository), "--port", str(port),
                      "--grpc-port", "0", "--allow-unverified", "true"], log, f"{url}/v2/health/ready", checkout)
    try:
        result = wrk(f"{url}/v2/models/{name}/infer", body, {"Content-Type": "application/json"}, connections=args.connections,
                     duration_s=args.duration)
    finally:
        server.stop()
    print(f"    {checkout}: {result.cells()}", flush=True)
    return result.requests_per_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, required=True, help="the checkout before (with its own .venv)")
    parser.add_argument("--b", type=Path, required=True, help="the checkout after (with its own .venv)")
    parser.add_argument("--models", default="fashion-cnn,elu-cifar11")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    parser.add_argument("--connections", type=int, default=64)
    add_json_option(parser, __file__)
    args = parser.parse_args()
    figures = {}
    with tempfile.TemporaryDirectory(prefix="serve-ab-") as tmp:
        for name in args.models.split(","):
            repository = make_repository(name, Path(tmp) / name)
            shape = ModelRepository(repository).get(name).card.input_shape
            image = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
            body = json.dumps({"inputs": [{"name": "input", "shape": list(image.shape), "datatype": "FP32", "data": image.ravel().tolist()}]}).encode()
            rounds = []
            print(f"{name}:", flush=True)
            for i in range(args.rounds):
                a = run_once(args.a.resolve(), repository, name, body, args, Path(tmp) / f"{name}-a{i}.log")
                b = run_once(args.b.resolve(), repository, name, body, args, Path(tmp) / f"{name}-b{i}.log")
                rounds.append((a, b))
            ratio = statistics.median(b / a for a, b in rounds)
            print(f"  {name}: B / A = {ratio:.3f} (rounds: {', '.join(f'{a:.0f} -> {b:.0f}' for a, b in rounds)})", flush=True)
            figures[name] = {"rounds_requests_per_s": rounds, "b_over_a_median": ratio}
    write_figures(args.json, {"a": str(args.a), "b": str(args.b), "models": figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())
