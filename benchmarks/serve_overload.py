"""Health under overload, and throughput, for each event loop `elunet serve` can run on.

For each loop (--event-loop asyncio, uvloop), one real `elunet serve` of the
synthetic model on 127.0.0.1, loaded by wrk (a separate process) with V2 JSON
requests of one image, first with 64 connections (throughput), then with
``--overload`` connections, while a probe opens a NEW connection for each
/v2/health/live and /v2/health/ready, every 100 ms, as a kubelet does. Prints
requests/s, p50, p99, and the probes' slowest answer (a probe unanswered
after 5 s counts as 5 s); exits 1 when a probe took longer than --health-bound-s.

    python benchmarks/serve_overload.py                    # both loops, 8 s per load
    python benchmarks/serve_overload.py --short --loops asyncio   # what the test runs
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from http.client import HTTPConnection
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from figures import add_json_option, write_figures  # noqa: E402
from fixtures_serve import LINEAR, SYNTHETIC_SHAPE, ServerProcess, make_synthetic_repository  # noqa: E402
from wrk_load import wrk  # noqa: E402

PROBE_TIMEOUT_S = 5.0


def probe_while(port: int, load) -> tuple[object, list[float], list]:
    """Run ``load()`` while probing health on new connections; (its result, probe seconds, failures)."""
    seconds, failures, stop = [], [], threading.Event()

    def probe():
        while not stop.is_set():
            for path in ("/v2/health/live", "/v2/health/ready"):
                t0 = time.perf_counter()
                try:
                    conn = HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT_S)
                    conn.request("GET", path)
                    status = conn.getresponse().status
                    conn.close()
                    if status != 200:
                        failures.append((path, status))
                except OSError as exc:
                    failures.append((path, type(exc).__name__))
                seconds.append(time.perf_counter() - t0)
            stop.wait(0.1)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        result = load()
    finally:
        stop.set()
        prober.join()
    return result, seconds, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loops", default="asyncio,uvloop", help="comma-separated event loops to measure")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of wrk per load")
    parser.add_argument("--overload", type=int, default=900, help="connections of the overload (under the default --max-connections)")
    parser.add_argument("--health-bound-s", type=float, default=1.0, help="slowest health answer allowed under overload")
    parser.add_argument("--short", action="store_true", help="3 s per load, the overload only, no figures recorded")
    add_json_option(parser, __file__)
    args = parser.parse_args()
    if args.short:
        args.json = None
    duration = 3.0 if args.short else args.duration

    x = np.random.default_rng(0).random((1, *SYNTHETIC_SHAPE)).round(4)
    body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}).encode()
    worst, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        repository = make_synthetic_repository(Path(tmp) / "repository")
        for loop in args.loops.split(","):
            server = ServerProcess(repository, Path(tmp) / f"{loop}.log", allow_unverified=True, event_loop=loop).wait_ready()
            try:
                url = f"{server.url}/v2/models/{LINEAR}/infer"
                loads = ([] if args.short else [64]) + [args.overload]
                for connections in loads:
                    result, seconds, failures = probe_while(
                        server.port, lambda c=connections: wrk(url, body, {"Content-Type": "application/json"}, connections=c, duration_s=duration, threads=2)
                    )
                    worst[loop] = max(seconds)
                    rows.append({"event_loop": loop, "connections": connections, "requests_per_s": result.requests_per_s, "p50_ms": result.p50_ms,
                                 "p99_ms": result.p99_ms, "health_probes": len(seconds), "slowest_health_s": max(seconds),
                                 "failed_probes": len(failures)})
                    print(f"{loop:8s} {connections:4d} connections: {result.cells()}   health on new connections: {len(seconds)} probes, "
                          f"slowest {max(seconds):.3f} s, {len(failures)} failed {failures[:3]}", flush=True)
            finally:
                server.stop()
    late = {loop: s for loop, s in worst.items() if s > args.health_bound_s}
    write_figures(args.json, {"duration_s": duration, "health_bound_s": args.health_bound_s, "loads": rows})
    if late:
        print(f"health slower than {args.health_bound_s:g} s under overload with: {late}")
    return 1 if late else 0


if __name__ == "__main__":
    sys.exit(main())
