"""Decoding runs off the event loop: liveness keeps answering while the heaviest legal requests are decoded.

A real `elunet serve` on the synthetic model; 8 concurrent 16 MB JSON bodies, then classify requests of
large PNGs, each while a probe measures /v2/health/live every 10 ms.

The bound on the probe's p99 is a budget with room for a loaded CI host (quiet here: 8-20 ms for JSON,
4-6 ms for PNGs; one CI run under foreign load: 51 ms). It still fails when JSON is parsed in threads
(0.66 s); for PNGs, whose decoding in threads costs the loop only ~40 ms, the test checks where the work
ran instead: in the decoding worker processes, by their CPU time.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection

import numpy as np
import pytest
from fixtures_serve import LINEAR, SYNTHETIC_SHAPE

pytestmark = pytest.mark.slow

BODY_LIMIT = 17 * 1024 * 1024
P99_LIMIT_S = 0.200


def post(port: int, path: str, body: bytes, content_type: str) -> int:
    conn = HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request("POST", path, body, {"Content-Type": content_type})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status


PROBE = """
import json, os, sys, time
from http.client import HTTPConnection
try:
    os.nice(-10)  # a kubelet's probe does not queue behind this test's own client threads
except OSError:
    pass
conn = HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
latencies = []
while not sys.stdin.closed:
    t0 = time.perf_counter()
    conn.request("GET", "/v2/health/live")
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status
    latencies.append(time.perf_counter() - t0)
    time.sleep(0.01)
    if sys.stdin in __import__("select").select([sys.stdin], [], [], 0)[0]:
        break
print(json.dumps(latencies))
"""


def liveness_while(port: int, load) -> tuple[list[int], list[float]]:
    """Run ``load()`` (returns statuses) while another process probes liveness every 10 ms;
    (statuses, probe latencies during the load). The probe has a process of its own, so that
    nothing in this test process delays it."""
    prober = subprocess.Popen([sys.executable, "-c", PROBE, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)  # the probe is running before the load starts
    try:
        statuses = load()
    finally:
        out, _ = prober.communicate("stop\n", timeout=30)
    assert prober.returncode == 0, out
    return statuses, json.loads(out)


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99))


def worker_cpu_seconds(server_pid: int) -> float:
    """CPU seconds used so far by the server's grandchildren: the decoding pool's workers (started by its fork server)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for child in children(server_pid):
        for worker in children(child):
            with open(f"/proc/{worker}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def children(pid: int) -> list[int]:
    return [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]


def process_seconds(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def assert_live_while(server, path: str, body: bytes, content_type: str, *, concurrent: int, requests: int, decode_s: float) -> None:
    """``requests`` POSTs of ``body``, ``concurrent`` at a time, all answered 200, while liveness keeps its p99,
    and decoded in the worker processes (``decode_s``: the CPU time one body takes to decode here, at least)."""

    def load():
        with ThreadPoolExecutor(concurrent) as pool:
            return list(pool.map(lambda _: post(server.port, path, body, content_type), range(requests)))

    before = worker_cpu_seconds(server.proc.pid)
    statuses, latencies = liveness_while(server.port, load)
    worker_s = worker_cpu_seconds(server.proc.pid) - before
    assert statuses == [200] * requests
    assert len(latencies) >= 20, "the load ended before the probe could measure it"
    print(f"liveness p99 {p99(latencies) * 1000:.1f} ms over {len(latencies)} probes; workers computed {worker_s:.2f} s")
    assert p99(latencies) < P99_LIMIT_S, f"liveness p99 {p99(latencies) * 1000:.1f} ms over {len(latencies)} probes"
    assert worker_s > 0.5 * requests * decode_s, f"{requests} decodes of {decode_s:.2f} s, but the worker processes computed {worker_s:.2f} s"


@pytest.fixture(scope="module")
def server(start_server, synthetic_repository):
    return start_server(synthetic_repository, max_body_bytes=BODY_LIMIT, max_batch_size=64, instances=1, allow_unverified=True,
                        max_image_pixels=70_000_000)  # the 64 Mpx PNGs below


def test_liveness_answers_while_eight_16_mb_json_bodies_are_decoded(server):
    rng = np.random.default_rng(3)
    per_image = len(json.dumps(np.round(rng.random(int(np.prod(SYNTHETIC_SHAPE))), 6).tolist()))
    n = (16 * 1024 * 1024) // per_image
    x = np.round(rng.random((n, *SYNTHETIC_SHAPE)), 6)
    body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}).encode()
    assert 15 * 1024 * 1024 < len(body) <= BODY_LIMIT

    # two rounds of 8 concurrent bodies
    from elunet.contracts import INPUT_NAME
    from elunet.model_config import TensorSignature
    from elunet.serve.tensors import decode_infer

    decode_s = process_seconds(lambda: decode_infer(body, None, None, BODY_LIMIT, TensorSignature(INPUT_NAME, "FP32", SYNTHETIC_SHAPE)))  # what the workers run
    assert_live_while(server, f"/v2/models/{LINEAR}/infer", body, "application/json", concurrent=8, requests=16, decode_s=decode_s)


def test_liveness_answers_while_large_pngs_are_decoded(server):
    from PIL import Image

    side = 8000  # 64 Mpx: under Pillow's decompression-bomb limit (89 Mpx)
    gradient = np.add.outer(np.arange(side, dtype=np.uint16), np.arange(side, dtype=np.uint16)) % 256
    png = io.BytesIO()
    Image.fromarray(gradient.astype(np.uint8), mode="L").save(png, format="PNG", compress_level=1)
    boundary = "elunetboundary"
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="big-{i}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
        + png.getvalue() + b"\r\n" for i in range(2)
    )
    body = parts + f"--{boundary}--\r\n".encode()

    # two rounds of 3 concurrent requests
    decode_s = 2 * process_seconds(lambda: Image.open(io.BytesIO(png.getvalue())).load())
    assert_live_while(server, f"/v1/models/{LINEAR}/classify", body, f"multipart/form-data; boundary={boundary}", concurrent=3, requests=6, decode_s=decode_s)


def test_errors_found_while_decoding_in_another_process_keep_their_status(server):
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 2, 3, 4], "datatype": "FP32", "data": [0.5] * 20000}]}).encode()
    assert len(body) > 64 * 1024  # decoded in the process pool
    conn = HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", f"/v2/models/{LINEAR}/infer", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    assert response.status == 400 and "expected [-1, 1, 8, 8]" in answer["error"], answer


def test_a_killed_decoding_worker_fails_its_request_once_then_the_pool_is_back(start_server, synthetic_repository):
    server = start_server(synthetic_repository, allow_unverified=True)
    x = np.round(np.random.default_rng(4).random((300, *SYNTHETIC_SHAPE)), 6)
    body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}).encode()
    assert len(body) > 64 * 1024  # decoded in the process pool
    path = f"/v2/models/{LINEAR}/infer"
    assert post(server.port, path, body, "application/json") == 200
    forkservers = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True).stdout.split()
    workers = [w for f in forkservers for w in subprocess.run(["pgrep", "-P", f], capture_output=True, text=True).stdout.split()]
    assert workers, "the decoding pool's worker processes"
    for pid in workers:
        subprocess.run(["kill", "-9", pid], check=True)
    time.sleep(0.5)
    statuses = [post(server.port, path, body, "application/json") for _ in range(3)]
    assert statuses[0] in (200, 503) and statuses[1:] == [200, 200], statuses
