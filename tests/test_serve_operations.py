"""Operating the server: overload (503 + recovery), timeouts (504), SIGTERM drain, API key."""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as triton
from fixtures_serve import LINEAR, SYNTHETIC_SHAPE, binary_infer_body, http, parse_infer_response

pytestmark = pytest.mark.slow


def infer(url: str, x: np.ndarray, headers: dict | None = None):
    body, hdrs = binary_infer_body(x)
    return http("POST", f"{url}/v2/models/{LINEAR}/infer", body, {**hdrs, **(headers or {})}, timeout=60)


def queue_depth(url: str) -> float:
    for line in http("GET", url + "/metrics")[2].decode().splitlines():
        if line.startswith(f'nv_inference_pending_request_count{{model="{LINEAR}"'):
            return float(line.split()[-1])
    return 0.0


def wait_for_depth(url: str, requests: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while queue_depth(url) < requests:
        assert time.monotonic() < deadline, f"queue never reached {requests} requests"
        time.sleep(0.02)


def test_overload_is_503_with_retry_after_then_the_server_recovers(start_server, synthetic_repository):
    # A long queue delay keeps the first request waiting, so the queue is full for a while.
    # Triton's max_queue_size counts requests.
    server = start_server(synthetic_repository, allow_unverified=True, max_batch_size=64, max_queue_delay_ms=1500, max_queue_size=2)
    x = np.random.default_rng(1).random((8, *SYNTHETIC_SHAPE), dtype=np.float32)
    with ThreadPoolExecutor(2) as pool:
        first = [pool.submit(infer, server.url, x[:4]) for _ in range(2)]
        wait_for_depth(server.url, 2)
        status, headers, body = infer(server.url, x[:1])
        assert status == 503 and headers["Retry-After"] and "queue full" in json.loads(body)["error"]
        assert [f.result()[0] for f in first] == [200, 200]
    status, headers, body = infer(server.url, x[:2])
    assert status == 200 and parse_infer_response(headers, body).shape == (2, 10)
    metrics = http("GET", server.url + "/metrics")[2].decode()
    assert f'nv_inference_request_failure{{model="{LINEAR}",reason="REJECTED",version="1"}} 1\n' in metrics, "Triton's reason for a full queue"
    server.stop()


def test_request_timeout_is_504_and_triton_timeout_parameter_shortens_it(start_server, synthetic_repository):
    server = start_server(synthetic_repository, allow_unverified=True, max_batch_size=64, max_queue_delay_ms=5000, request_timeout_s=1.0)
    x = np.zeros((1, *SYNTHETIC_SHAPE), np.float32)
    t0 = time.monotonic()
    status, _, body = infer(server.url, x)
    assert status == 504 and "within 1 s" in json.loads(body)["error"]
    assert 0.9 < time.monotonic() - t0 < 4.0
    # Triton's per-request timeout parameter, in microseconds.
    header = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}], "parameters": {"timeout": 200_000}}
    t0 = time.monotonic()
    status, _, body = http("POST", f"{server.url}/v2/models/{LINEAR}/infer", json.dumps(header).encode(), {"Content-Type": "application/json"})
    assert status == 504 and "within 0.2 s" in json.loads(body)["error"]
    assert time.monotonic() - t0 < 0.9
    rejected = f'nv_inference_request_failure{{model="{LINEAR}",reason="REJECTED",version="1"}} 2\n'
    assert rejected in http("GET", server.url + "/metrics")[2].decode(), "Triton's reason for a request past its timeout"
    server.stop()


def test_sigterm_answers_every_queued_request_then_exits(start_server, synthetic_repository):
    server = start_server(synthetic_repository, allow_unverified=True, max_batch_size=64, max_queue_delay_ms=2000, request_timeout_s=30)
    rng = np.random.default_rng(2)
    inputs = [rng.random((int(rng.integers(1, 4)), *SYNTHETIC_SHAPE), dtype=np.float32) for _ in range(24)]
    with ThreadPoolExecutor(len(inputs)) as pool:
        futures = [pool.submit(infer, server.url, x) for x in inputs]
        wait_for_depth(server.url, len(inputs))
        server.proc.send_signal(signal.SIGTERM)
        results = [f.result(timeout=60) for f in futures]
    assert [r[0] for r in results] == [200] * len(inputs), [r[2][:200] for r in results if r[0] != 200]
    for x, (_, headers, body) in zip(inputs, results):
        assert parse_infer_response(headers, body).shape == (len(x), 10)
    assert server.proc.wait(30) == 0, "a drained shutdown exits 0 (not 143)"
    log = server.log()
    assert "answering the requests already accepted" in log
    with pytest.raises(OSError):
        http("GET", server.url + "/v2/health/live", timeout=2)


def test_api_key_protects_everything_but_health_and_metrics(start_server, synthetic_repository):
    server = start_server(synthetic_repository, allow_unverified=True, api_key="s3cret")
    x = np.zeros((1, *SYNTHETIC_SHAPE), np.float32)
    status, headers, body = infer(server.url, x)
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer" and "Authorization: Bearer" in json.loads(body)["error"]
    assert infer(server.url, x, {"Authorization": "Bearer wrong"})[0] == 401
    assert infer(server.url, x, {"Authorization": "Bearer s3cret"})[0] == 200
    assert http("GET", server.url + "/v2/health/ready")[0] == 200
    assert http("GET", server.url + "/metrics")[0] == 200
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.get_model_metadata(LINEAR, headers={"Authorization": "Bearer s3cret"})["name"] == LINEAR
    server.stop()


def test_readiness_waits_for_warm_up_while_liveness_answers(start_server, synthetic_repository, tmp_path):
    # A repository whose second model cannot load: live, but never ready; the good model still serves.
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(synthetic_repository / LINEAR, repo / LINEAR)
    shutil.copytree(synthetic_repository / LINEAR, repo / "broken")
    card = json.loads((repo / "broken" / "1" / "card.json").read_text())
    (repo / "broken" / "1" / "card.json").write_text(json.dumps({**card, "name": "broken"}))
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    server = start_server(repo, wait=False, allow_unverified=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            if http("GET", server.url + "/v2/health/live", timeout=2)[0] == 200:
                break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    time.sleep(1.0)
    status, _, body = http("GET", server.url + "/v2/health/ready")
    assert status == 503 and "broken v1: UNAVAILABLE" in json.loads(body)["error"]
    assert http("GET", server.url + "/v2/models/broken/ready")[0] == 503
    assert http("GET", server.url + f"/v2/models/{LINEAR}/ready")[0] == 200
    assert infer(server.url, np.zeros((1, *SYNTHETIC_SHAPE), np.float32))[0] == 200
    server.stop()


def test_models_option_serves_only_the_named_models(start_server, synthetic_repository):
    server = start_server(synthetic_repository, allow_unverified=True, models=LINEAR)
    assert http("GET", f"{server.url}/v2/models/{LINEAR}")[0] == 200
    status, _, body = http("GET", f"{server.url}/v2/models/synthetic-faulty")
    assert status == 404 and "served models: synthetic-linear" in json.loads(body)["error"]
    server.stop()
