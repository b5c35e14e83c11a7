"""End to end on the real model: the trained fashion-cnn exported to the repository, served by a real
`elunet serve` process; answers compared with the PyTorch reference of the source checkpoint."""

from __future__ import annotations

from http.client import HTTPConnection
import json
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from fixtures_serve import binary_infer_body, http, parse_infer_response

from elunet.export.parity import Tolerance, compare
from elunet.repository import ModelRepository

pytestmark = pytest.mark.slow

CONCURRENT_REQUESTS = 2000
CONCURRENT_CLIENTS = 32
MAX_IMAGES_PER_REQUEST = 8


@pytest.fixture(scope="module")
def real_model(exported_repository):
    repository = ModelRepository(exported_repository)
    (name,) = repository.models()
    return repository.get(name)


@pytest.fixture(scope="module")
def fashion_test_images():
    """Real Fashion-MNIST test images, uint8 [N, 1, 28, 28], and their labels."""
    from elunet.train.data import load_dataset

    test = load_dataset("fashion-mnist", "test")
    return test.images[:512].numpy(), test.targets[:512].numpy()


@pytest.fixture(scope="module")
def reference_logits(trained_checkpoint, fashion_test_images):
    """The PyTorch reference: the source checkpoint's network, float32 on the CPU."""
    import torch

    from elunet.train.checkpoint import load_checkpoint

    model = load_checkpoint(trained_checkpoint).model
    with torch.inference_mode():
        return model(torch.from_numpy(fashion_test_images[0].astype(np.float32) / 255)).numpy()


@pytest.fixture(scope="module")
def servers(start_server, exported_repository):
    """One server per backend under test, started once for this module."""
    return {
        backend: start_server(exported_repository, backend=backend, device="cpu", max_batch_size=32, max_queue_delay_ms=2, instances=2)
        for backend in ("onnxruntime", "torch")
    }


def send(url: str, model: str, x: np.ndarray, datatype: str = "FP32") -> np.ndarray:
    body, headers = binary_infer_body(x, datatype)
    status, h, out = http("POST", f"{url}/v2/models/{model}/infer", body, headers)
    assert status == 200, out
    return parse_infer_response(h, out)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_served_logits_match_the_pytorch_reference_within_the_export_tolerance(
    servers, backend, real_model, fashion_test_images, reference_logits
):
    images, _ = fashion_test_images
    tol = Tolerance.for_dtype(real_model.card.export.dtype)
    url = servers[backend].url
    # Requests of different sizes, as float pixels and as raw uint8 pixels (scaled by the server).
    cuts = [0, 1, 14, 77, 200, 512]
    for datatype, tensor in (("FP32", images.astype(np.float32) / 255), ("UINT8", images)):
        served = np.concatenate([send(url, real_model.name, tensor[a:b], datatype) for a, b in zip(cuts, cuts[1:])])
        result = compare(reference_logits, served, tol)
        assert result.passed, (backend, datatype, result)


def test_tritonclient_round_trip_on_the_real_model(servers, real_model, fashion_test_images, reference_logits):
    url = servers["onnxruntime"].url.removeprefix("http://")
    client = triton.InferenceServerClient(url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(real_model.name, str(real_model.version))
    meta = client.get_model_metadata(real_model.name)
    assert meta["inputs"][0]["shape"] == [-1, *real_model.card.input_shape]
    assert meta["outputs"][0]["shape"] == [-1, real_model.card.num_classes]
    x = fashion_test_images[0][:16].astype(np.float32) / 255
    for binary in (True, False):
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        out = triton.InferRequestedOutput("logits", binary_data=binary)
        logits = client.infer(real_model.name, [tensor], outputs=[out], model_version=str(real_model.version)).as_numpy("logits")
        assert compare(reference_logits[:16], logits, Tolerance.for_dtype(real_model.card.export.dtype)).passed
    client.close()


def instance_metrics(metrics: str, name: str, model: str) -> dict[str, float]:
    """instance index -> value of elunet_inference_<name>{model=...,instance=...}."""
    found = {}
    for line in metrics.splitlines():
        if line.startswith(f"elunet_inference_{name}") and f'model="{model}"' in line:
            found[line.split('instance="')[1].split('"')[0]] = float(line.split()[-1])
    return found


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_thousands_of_concurrent_requests_each_get_exactly_their_own_answer(servers, backend, real_model):
    """2000 requests, 32 clients, random inputs and batch sizes, 2 model instances; each answer equals that
    input run alone, and no instance ever computed two batches at once."""
    from elunet.runtime import open_engine

    alone = open_engine(backend, real_model.model_file() if backend == "onnxruntime" else real_model.path, device="cpu").create_instance()
    rng = np.random.default_rng(5)
    shape = real_model.card.input_shape
    requests = [rng.random((int(rng.integers(1, MAX_IMAGES_PER_REQUEST + 1)), *shape), dtype=np.float32) for _ in range(CONCURRENT_REQUESTS)]
    expected = [alone.infer(x) for x in requests]
    port = servers[backend].port
    path = f"/v2/models/{real_model.name}/infer"

    def client(indices: list[int]) -> list[tuple[int, int, np.ndarray | str]]:
        conn = HTTPConnection("127.0.0.1", port, timeout=120)  # one keep-alive connection per client
        answers = []
        for i in indices:
            body, headers = binary_infer_body(requests[i])
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            payload = response.read()
            answers.append((i, response.status, parse_infer_response(response.headers, payload) if response.status == 200 else payload.decode()))
        conn.close()
        return answers

    order = list(range(CONCURRENT_REQUESTS))
    random.Random(6).shuffle(order)
    t0 = time.monotonic()
    with ThreadPoolExecutor(CONCURRENT_CLIENTS) as pool:
        results = [a for chunk in pool.map(client, [order[k::CONCURRENT_CLIENTS] for k in range(CONCURRENT_CLIENTS)]) for a in chunk]
    elapsed = time.monotonic() - t0
    errors = [(i, status, answer) for i, status, answer in results if status != 200]
    assert not errors, errors[:5]
    # Identical up to float rounding of different batch compositions; another request's answer would be far off.
    mismatches = [i for i, _, answer in results if not np.allclose(answer, expected[i], atol=1e-5, rtol=1e-5)]
    assert len(results) == CONCURRENT_REQUESTS and not mismatches, f"{len(mismatches)} mismatches, e.g. request {mismatches[:5]}"
    metrics = http("GET", servers[backend].url + "/metrics")[2].decode()
    executions = instance_metrics(metrics, "instance_exec_count_total", real_model.name)
    assert sorted(executions) == ["0", "1"] and min(executions.values()) > 0, f"both instances must compute: {executions}"
    assert set(instance_metrics(metrics, "instance_overlaps", real_model.name).values()) == {0.0}
    batches = [line for line in metrics.splitlines() if line.startswith("elunet_inference_batch_size_count")]
    print(f"{backend}: {CONCURRENT_REQUESTS} requests from {CONCURRENT_CLIENTS} clients in {elapsed:.1f} s; {batches}; per instance {executions}")


def test_health_answers_while_a_big_request_computes(servers, real_model):
    url = servers["torch"].url
    x = np.random.default_rng(7).random((1000, *real_model.card.input_shape), dtype=np.float32)  # 32 batches, under the queue limit
    body, headers = binary_infer_body(x)
    done = {}
    worker = threading.Thread(target=lambda: done.setdefault("r", http("POST", f"{url}/v2/models/{real_model.name}/infer", body, headers, timeout=300)))
    worker.start()
    time.sleep(0.5)
    slowest = 0.0
    while worker.is_alive():
        t0 = time.monotonic()
        assert http("GET", url + "/v2/health/ready", timeout=10)[0] == 200
        slowest = max(slowest, time.monotonic() - t0)
        time.sleep(0.05)
    worker.join()
    assert done["r"][0] == 200
    assert slowest < 2.0, f"a health check took {slowest:.2f} s while a batch computed"


def test_elunet_classify_names_the_label_of_a_real_fashion_mnist_image(servers, real_model, fashion_test_images, reference_logits, tmp_path):
    from PIL import Image

    images, _ = fashion_test_images
    files = []
    for i in range(3):
        path = tmp_path / f"test-{i}.png"
        Image.fromarray(images[i, 0], mode="L").save(path)
        files.append(str(path))
    out = subprocess.run(
        [sys.executable, "-m", "elunet", "classify", *files, "--model", real_model.name, "--url", servers["onnxruntime"].url, "-k", "2", "--wait", "30"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == len(files), out.stdout  # one line per image: an empty output must not pass
    labels = real_model.card.labels
    for i, line in enumerate(lines):
        best = labels[int(np.argmax(reference_logits[i]))]
        assert line.startswith(f"test-{i}.png: {best} "), (line, best)
