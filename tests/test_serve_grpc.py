"""The gRPC front end and Triton's protocol extensions, against real `elunet serve` processes on 127.0.0.1:
the real tritonclient.grpc (sync and asyncio) and tritonclient.http, and the KServe SDK's InferenceGRPCClient."""

from __future__ import annotations

import asyncio
import gzip
import importlib.util
import json
import shutil
import subprocess
import sys

import grpc
import numpy as np
import pytest
from elunet.serve.scheduling import AUTO_MAX_INSTANCES
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
import tritonclient.http as thttp
from fixtures_serve import LINEAR, SYNTHETIC_LABELS, SYNTHETIC_SHAPE, http
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from elunet.repository import ModelRepository
from elunet.runtime import open_engine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real(exported_repository, start_server, tmp_path_factory):
    """The trained fashion-cnn served with gRPC on, in explicit mode (so the repository API works), with an API key."""
    root = shutil.copytree(exported_repository, tmp_path_factory.mktemp("grpc") / "repository")
    (name,) = ModelRepository(root).models()
    server = start_server(root, model_control_mode="explicit", load_model=name, api_key="k3y")
    version = ModelRepository(root).get(name)
    return server, version


AUTH = {"authorization": "Bearer k3y"}


def auth() -> dict:
    """A fresh copy: tritonclient.http adds its own headers to the dict it is given."""
    return dict(AUTH)


def images(version, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *version.card.input_shape), dtype=np.float32)


def reference(version, x: np.ndarray) -> np.ndarray:
    return open_engine("onnxruntime", version.model_file(), device="cpu").create_instance().infer(x)


def test_tritonclient_grpc_does_everything(real):
    server, version = real
    name = version.name
    client = tgrpc.InferenceServerClient(server.grpc_url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name, headers=AUTH)
    meta = client.get_server_metadata(headers=AUTH)
    assert meta.name == "elunet" and "classification" in meta.extensions and "statistics" in meta.extensions
    model = client.get_model_metadata(name, headers=AUTH)
    assert model.platform == "onnxruntime_onnx" and list(model.inputs[0].shape) == [-1, *version.card.input_shape]
    config = client.get_model_config(name, headers=AUTH, as_json=True)["config"]
    assert config["max_batch_size"] == 64 and config["input"][0]["dims"] == [str(d) for d in version.card.input_shape]
    x = images(version, 5)
    expected = reference(version, x)
    tensor = tgrpc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(name, [tensor], headers=AUTH)
    np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-5, rtol=1e-5)
    top = client.infer(name, [tensor], outputs=[tgrpc.InferRequestedOutput("logits", class_count=3)], headers=AUTH).as_numpy("logits")
    assert top.shape == (5, 3)
    for row, logits in zip(top, expected):
        value, index, label = row[0].decode().split(":")
        assert int(index) == int(np.argmax(logits)) and label == version.card.labels[int(index)] and abs(float(value) - logits.max()) < 1e-4
    stats = client.get_inference_statistics(name, headers=AUTH, as_json=True)["model_stats"][0]
    assert int(stats["inference_stats"]["success"]["count"]) >= 2 and int(stats["inference_count"]) >= 10
    index = client.get_model_repository_index(headers=AUTH, as_json=True)["models"]
    assert {"name": name, "version": "1", "state": "READY"}.items() <= index[0].items()
    client.unload_model(name, headers=AUTH)
    assert not client.is_model_ready(name, headers=AUTH)
    client.load_model(name, headers=AUTH)
    assert client.is_model_ready(name, headers=AUTH)
    client.close()


def test_tritonclient_grpc_asyncio_and_the_stream(real):
    server, version = real
    x = images(version, 3, seed=1)
    expected = reference(version, x)

    async def main():
        client = tgrpc_aio.InferenceServerClient(server.grpc_url)
        assert await client.is_server_ready()
        tensor = tgrpc_aio.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        single = (await client.infer(version.name, [tensor], headers=AUTH)).as_numpy("logits")

        async def requests():
            for i in range(6):
                yield {"model_name": version.name, "inputs": [tensor], "request_id": str(i)}

        streamed = {}
        async for result, error in client.stream_infer(requests(), headers=AUTH):
            assert error is None, error.message()
            streamed[result.get_response().id] = result.as_numpy("logits")
        await client.close()
        return single, streamed

    single, streamed = asyncio.run(main())
    np.testing.assert_allclose(single, expected, atol=1e-5, rtol=1e-5)
    assert sorted(streamed) == [str(i) for i in range(6)]
    for logits in streamed.values():
        np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-5)


KSERVE_CLIENT = """
import asyncio, sys
import numpy as np
from kserve import InferInput, InferRequest
from kserve.inference_client import InferenceGRPCClient

async def main():
    x = np.load(sys.argv[3])
    client = InferenceGRPCClient(sys.argv[1], verbose=False)
    tensor = InferInput(name="input", shape=list(x.shape), datatype="FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    response = await client.infer(InferRequest(model_name=sys.argv[2], infer_inputs=[tensor]), headers=(("authorization", "Bearer k3y"),))
    await client.close()
    np.save(sys.argv[4], response.outputs[0].as_numpy())

asyncio.run(main())
"""


def test_kserve_sdk_grpc_client_infers(real, tmp_path):
    # In a process of its own: the KServe SDK's generated modules declare the same protobuf symbols as tritonclient's.
    if importlib.util.find_spec("kserve") is None:
        pytest.skip("the KServe SDK is not installed (it comes with elunet[dev])")
    server, version = real
    x = images(version, 2, seed=2)
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run([sys.executable, "-c", KSERVE_CLIENT, server.grpc_url, version.name, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), reference(version, x), atol=1e-5, rtol=1e-5)


def test_tritonclient_http_config_statistics_classification(real):
    server, version = real
    client = thttp.InferenceServerClient(server.url.removeprefix("http://"))
    config = client.get_model_config(version.name, headers=auth())
    assert config["name"] == version.name and config["platform"] == "onnxruntime_onnx"
    assert config["input"][0]["dims"] == list(version.card.input_shape), "dims are JSON numbers, as Triton writes them"
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000 and config["instance_group"][0]["count"] in range(1, AUTO_MAX_INSTANCES + 1)
    x = images(version, 4, seed=3)
    expected = reference(version, x)
    for binary in (True, False):
        tensor = thttp.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        out = thttp.InferRequestedOutput("logits", binary_data=binary, class_count=2)
        top = client.infer(version.name, [tensor], outputs=[out], headers=auth()).as_numpy("logits")
        assert top.shape == (4, 2)
        labels = [str(row[0], "utf-8") if isinstance(row[0], bytes) else row[0] for row in top]
        assert [int(t.split(":")[1]) for t in labels] == list(np.argmax(expected, 1))
    stats = client.get_inference_statistics(version.name, headers=auth())["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] >= 2 and isinstance(stats["inference_stats"]["queue"]["ns"], int)
    assert stats["batch_stats"] and all(b["compute_infer"]["count"] >= 1 for b in stats["batch_stats"])
    everything = client.get_inference_statistics(headers=auth())["model_stats"]
    assert any(m["name"] == version.name for m in everything)
    client.close()


def test_protocol_edges_raw_binary_gzip_trailing_slash(real):
    server, version = real
    x = images(version, 3, seed=4)
    expected = reference(version, x)
    path = f"{server.url}/v2/models/{version.name}/infer"
    status, headers, body = http("POST", path, x.tobytes(), {**AUTH, "Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"})
    assert status == 200, body
    out = json.loads(body)["outputs"][0]
    np.testing.assert_allclose(np.asarray(out["data"], np.float32).reshape(out["shape"]), expected, atol=1e-5, rtol=1e-5)
    assert http("POST", path, x.tobytes()[:-4], {**AUTH, "Inference-Header-Content-Length": "0"})[0] == 400
    request = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    status, headers, body = http("POST", path, json.dumps(request).encode(), {**AUTH, "Content-Type": "application/json", "Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    out = json.loads(gzip.decompress(body))["outputs"][0]
    np.testing.assert_allclose(np.asarray(out["data"], np.float32).reshape(out["shape"]), expected, atol=1e-5, rtol=1e-5)
    status, _, body = http("GET", f"{server.url}/v2/", headers=auth())
    assert status == 200 and json.loads(body)["name"] == "elunet"
    assert http("GET", f"{server.url}/v2/health/ready/")[0] == 200
    assert http("GET", f"{server.url}/v2/models/stats", headers=auth())[0] == 200, "stats is a route, not a model name"
    meta = json.loads(http("GET", f"{server.url}/v2", headers=auth())[2])
    assert set(meta["extensions"]) == {"binary_tensor_data", "classification", "model_configuration", "model_repository",
                                       "model_repository(unload_dependents)", "statistics", "system_shared_memory"}


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value.status()


def test_every_grpc_error_has_its_status_code(real, start_server, synthetic_repository):
    server, version = real
    client = tgrpc.InferenceServerClient(server.grpc_url)
    good = tgrpc.InferInput("input", [1, *version.card.input_shape], "FP32")
    good.set_data_from_numpy(images(version, 1))
    wrong = tgrpc.InferInput("input", [1, 3, 3, 3], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 3, 3), np.float32))
    assert code_of(lambda: client.infer(version.name, [wrong], headers=AUTH)) == "StatusCode.INVALID_ARGUMENT"
    assert code_of(lambda: client.infer("no-such-model", [good], headers=AUTH)) == "StatusCode.NOT_FOUND"
    assert code_of(lambda: client.infer(version.name, [good])) == "StatusCode.UNAUTHENTICATED"
    assert code_of(lambda: client.infer(version.name, [good], headers={"authorization": "Bearer nope"})) == "StatusCode.UNAUTHENTICATED"
    big_x = np.zeros((6000, *version.card.input_shape), np.float32)  # 18.8 MB, over the 16 MiB message limit
    big = tgrpc.InferInput("input", list(big_x.shape), "FP32")
    big.set_data_from_numpy(big_x)
    assert code_of(lambda: client.infer(version.name, [big], headers=AUTH)) == "StatusCode.RESOURCE_EXHAUSTED"
    assert code_of(lambda: client.infer(version.name, [good], headers=AUTH, client_timeout=0.000001)) == "StatusCode.DEADLINE_EXCEEDED"
    # The request's own timeout parameter (µs), shorter than the 2 ms queue delay of a lone request: the server's 504.
    assert code_of(lambda: client.infer(version.name, [good], headers=AUTH, timeout=1)) == "StatusCode.DEADLINE_EXCEEDED"
    none_mode = start_server(synthetic_repository, allow_unverified=True)
    other = tgrpc.InferenceServerClient(none_mode.grpc_url)
    assert code_of(lambda: other.load_model(LINEAR)) == "StatusCode.UNAVAILABLE"
    client.unload_model(version.name, headers=AUTH)
    assert code_of(lambda: client.get_model_metadata(version.name, headers=AUTH)) in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE")
    client.load_model(version.name, headers=AUTH)
    client.close()
    other.close()


def test_grpc_health_service_for_kubernetes_probes(real):
    server, version = real

    async def main():
        async with grpc.aio.insecure_channel(server.grpc_url) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            overall = await stub.Check(health_pb2.HealthCheckRequest())
            model = await stub.Check(health_pb2.HealthCheckRequest(service=version.name))
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await stub.Check(health_pb2.HealthCheckRequest(service="no-such-model"))
            return overall.status, model.status, unknown.value.code()

    overall, model, unknown = asyncio.run(main())
    assert overall == model == health_pb2.HealthCheckResponse.SERVING and unknown == grpc.StatusCode.NOT_FOUND


def test_sigterm_drains_grpc_too(start_server, synthetic_repository):
    server = start_server(synthetic_repository, allow_unverified=True, max_queue_delay_ms=1500, max_batch_size=64)

    async def main():
        client = tgrpc_aio.InferenceServerClient(server.grpc_url)
        x = np.zeros((1, *SYNTHETIC_SHAPE), np.float32)
        tensor = tgrpc_aio.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        calls = [asyncio.create_task(client.infer(LINEAR, [tensor])) for _ in range(8)]
        await asyncio.sleep(0.5)  # queued, waiting for the 1.5 s delay
        server.proc.send_signal(15)
        results = await asyncio.gather(*calls, return_exceptions=True)
        await client.close()
        return results

    results = asyncio.run(main())
    assert all(not isinstance(r, Exception) for r in results), results
    assert all(r.as_numpy("logits").shape == (1, len(SYNTHETIC_LABELS)) for r in results)
    assert server.proc.wait(30) == 0, "a drained shutdown exits 0"
