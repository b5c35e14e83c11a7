"""gRPC vs HTTP with binary tensors vs HTTP with JSON tensors, on one `elunet serve`, in one run.

A freshly initialised network of the architecture (speed does not depend on
the weights) is exported into a temporary repository and served once (HTTP and
gRPC ports of the same process). Each protocol is then driven in turn by
``--clients`` threads in this process, each with its own tritonclient
(tritonclient.grpc, or tritonclient.http with and without binary data),
sending one request of one image and waiting for the answer (closed loop).
Prints requests/s, p50 and p99, and each protocol's ratio to HTTP JSON.

    python benchmarks/serve_protocols.py --model fashion-cnn --clients 16 --duration 10
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from figures import add_json_option, write_figures  # noqa: E402
from fixtures_serve import ServerProcess  # noqa: E402  (the tests' launcher: one copy)
from serve_load import make_repository  # noqa: E402

from elunet.repository import ModelRepository  # noqa: E402


def client_call(protocol: str, server: ServerProcess, model: str, x: np.ndarray):
    """A function that sends one request over ``protocol`` with a client of its own."""
    if protocol == "grpc":
        import tritonclient.grpc as t

        client = t.InferenceServerClient(server.grpc_url)
        tensor = t.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return lambda: client.infer(model, [tensor]).as_numpy("logits")
    import tritonclient.http as t

    binary = protocol == "http-binary"
    client = t.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = t.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    output = t.InferRequestedOutput("logits", binary_data=binary)
    return lambda: client.infer(model, [tensor], outputs=[output]).as_numpy("logits")


def drive(protocol: str, server: ServerProcess, model: str, x: np.ndarray, clients: int, duration: float) -> tuple[float, float, float]:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    ready = threading.Barrier(clients + 1)
    window: list[float] = []

    def loop(k: int) -> None:
        call = client_call(protocol, server, model, x)  # in its thread: tritonclient.http's gevent client stays in the thread that made it
        call()  # connect and warm up
        ready.wait()
        stop = window[0]
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            call()
            latencies[k].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    window.append(t0 + duration)
    ready.wait()
    for t in threads:
        t.join()
    done = np.concatenate([np.array(v) for v in latencies]) * 1000
    return len(done) / (time.monotonic() - t0), float(np.percentile(done, 50)), float(np.percentile(done, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fashion-cnn")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per protocol")
    add_json_option(parser, __file__)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repository = make_repository(args.model, Path(tmp))
        card = ModelRepository(repository).get(args.model).card
        x = np.random.default_rng(0).random((1, *card.input_shape), dtype=np.float32)
        server = ServerProcess(repository, Path(tmp) / "server.log", allow_unverified=True, log_level="warning").wait_ready(300)
        try:
            results = {p: drive(p, server, args.model, x, args.clients, args.duration) for p in ("http-json", "http-binary", "grpc")}
        finally:
            server.stop()
    base = results["http-json"][0]
    print(f"{args.model}, {args.clients} closed-loop clients (threads of this process), 1 image per request, {args.duration:g} s each:")
    for protocol, (rps, p50, p99) in results.items():
        print(f"  {protocol:<12}{rps:>8.0f} requests/s   p50 {p50:>6.1f} ms   p99 {p99:>6.1f} ms   x{rps / base:.2f} of HTTP JSON")
    write_figures(args.json, {"model": args.model, "clients": args.clients, "duration_s": args.duration, "protocols": [
        {"protocol": p, "requests_per_s": rps, "p50_ms": p50, "p99_ms": p99, "over_http_json": rps / base} for p, (rps, p50, p99) in results.items()]})


if __name__ == "__main__":
    main()
