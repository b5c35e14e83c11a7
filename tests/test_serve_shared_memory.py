"""Triton's system shared-memory extension against a real server: regions made with tritonclient's own
tritonclient.utils.shared_memory, registered, used and unregistered through both tritonclient clients, and
hostile regions refused with a clear 400 / INVALID_ARGUMENT (the server still answering after each)."""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
import tritonclient.utils.shared_memory as shm
from fixtures_serve import LINEAR, SYNTHETIC_SHAPE, http

pytestmark = pytest.mark.slow

IMAGES = 3
INPUT_BYTES = IMAGES * int(np.prod(SYNTHETIC_SHAPE)) * 4
OUTPUT_BYTES = IMAGES * 10 * 4
SPARE = 64  # bytes of each object beyond its input and output, for regions and tensors at offsets
SYSTEM = "/v2/systemsharedmemory"
CUDA = "/v2/cudasharedmemory"


@pytest.fixture(scope="module")
def server(start_server, synthetic_repository):
    return start_server(synthetic_repository, allow_unverified=True, max_batch_size=8)


@pytest.fixture()
def region():
    """(name, key, handle) of a fresh POSIX shared-memory object that holds an input and, after it, an output."""
    name = f"elunet-test-{uuid.uuid4().hex[:12]}"
    handle = shm.create_shared_memory_region(name, "/" + name, INPUT_BYTES + OUTPUT_BYTES + SPARE)
    yield name, "/" + name, handle
    shm.destroy_shared_memory_region(handle)


def clients(server):
    return {"http": thttp.InferenceServerClient(server.url.removeprefix("http://")), "grpc": tgrpc.InferenceServerClient(server.grpc_url)}


def pixels() -> np.ndarray:
    return np.random.default_rng(3).random((IMAGES, *SYNTHETIC_SHAPE), dtype=np.float32)


def expected_logits(server, x: np.ndarray) -> np.ndarray:
    """The same images' logits, sent in the request."""
    client = clients(server)["grpc"]
    tensor = tgrpc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(LINEAR, [tensor]).as_numpy("logits")


def shm_infer(client, module, name: str, input_bytes: int = INPUT_BYTES, output_offset: int = INPUT_BYTES, output_bytes: int = OUTPUT_BYTES,
              input_offset: int = 0):
    tensor = module.InferInput("input", [IMAGES, *SYNTHETIC_SHAPE], "FP32")
    tensor.set_shared_memory(name, input_bytes, offset=input_offset)
    output = module.InferRequestedOutput("logits")
    output.set_shared_memory(name, output_bytes, offset=output_offset)
    return client.infer(LINEAR, [tensor], outputs=[output])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_inputs_read_from_and_outputs_written_to_a_region(server, region, protocol):
    name, key, handle = region
    client, module = clients(server)[protocol], {"http": thttp, "grpc": tgrpc}[protocol]
    x = pixels()
    shm.set_shared_memory_region(handle, [x])
    client.register_system_shared_memory(name, key, INPUT_BYTES + OUTPUT_BYTES)
    try:
        status = client.get_system_shared_memory_status(region_name=name)
        if protocol == "grpc":
            status = [{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size} for r in status.regions.values()]
        assert status == [{"name": name, "key": key, "offset": 0, "byte_size": INPUT_BYTES + OUTPUT_BYTES}]
        result = shm_infer(client, module, name)
        written = shm.get_contents_as_numpy(handle, np.float32, [IMAGES, 10], offset=INPUT_BYTES)
        np.testing.assert_allclose(written, expected_logits(server, x), rtol=1e-6)
        out = result.get_output("logits")
        if protocol == "http":
            assert out == {"name": "logits", "datatype": "FP32", "shape": [IMAGES, 10]}, "the answer names the output; its data is in the region"
        else:
            assert list(out.shape) == [IMAGES, 10] and list(result.get_response().raw_output_contents) == [b""]
    finally:
        client.unregister_system_shared_memory(name)
    assert json.loads(http("GET", server.url + SYSTEM + "/status")[2]) == []


def test_offsets_of_a_region_in_its_object_and_of_a_tensor_in_its_region_add_up(server, region):
    name, key, handle = region
    client = clients(server)["http"]
    x = pixels()
    # The region starts 16 bytes into the object, the input 8 bytes into the region: at byte 24 of the object.
    shm.set_shared_memory_region(handle, [x], offset=24)
    client.register_system_shared_memory(name, key, INPUT_BYTES + OUTPUT_BYTES + SPARE - 16, offset=16)
    try:
        shm_infer(client, thttp, name, input_offset=8, output_offset=INPUT_BYTES + 8)
    finally:
        client.unregister_system_shared_memory(name)
    written = shm.get_contents_as_numpy(handle, np.float32, [IMAGES, 10], offset=16 + INPUT_BYTES + 8)
    np.testing.assert_allclose(written, expected_logits(server, x), rtol=1e-6)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_hostile_regions_are_refused_clearly(server, region, protocol):
    name, key, handle = region
    client, module = clients(server)[protocol], {"http": thttp, "grpc": tgrpc}[protocol]
    error = module.InferenceServerException

    def refused(match: str, call, *args, **kwargs):
        with pytest.raises(error, match=match) as caught:
            call(*args, **kwargs)
        if protocol == "grpc":
            assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", caught.value
        else:
            assert caught.value.status() == "400", caught.value

    refused("no shared memory object", client.register_system_shared_memory, name, "/elunet-no-such-object", 64)
    refused("runs past its end", client.register_system_shared_memory, name, key, INPUT_BYTES + OUTPUT_BYTES, offset=SPARE + 8)
    refused("not a POSIX shared memory name", client.register_system_shared_memory, name, "/../etc/passwd", 64)
    refused("not a POSIX shared memory name", client.register_system_shared_memory, name, key + "\0", 64)
    refused("not registered", shm_infer, client, module, name)
    client.register_system_shared_memory(name, key, INPUT_BYTES + OUTPUT_BYTES)
    try:
        refused("already registered", client.register_system_shared_memory, name, key, 64)
        refused("runs past the end of shared memory region", shm_infer, client, module, name, input_offset=OUTPUT_BYTES + 4)
        refused("must be a non-negative integer", shm_infer, client, module, name, input_offset=-8)
        refused("takes 768 bytes", shm_infer, client, module, name, input_bytes=INPUT_BYTES - 4)
        refused("more than its shared_memory_byte_size", shm_infer, client, module, name, output_bytes=OUTPUT_BYTES - 4)
        os.truncate(f"/dev/shm/{name}", 16)  # the client shrinks its object under the server: a read past its end would be SIGBUS
        refused("was truncated", shm_infer, client, module, name)
    finally:
        client.unregister_system_shared_memory(name)
    assert client.is_server_live()


def test_a_region_unregistered_while_in_use_stays_mapped_until_answered(server, region):
    """Many requests on one region while another thread unregisters it: each is answered right or refused with
    400 (region not registered), never a crash; the server is fine afterwards."""
    name, key, handle = region
    client = clients(server)["grpc"]
    x = pixels()
    shm.set_shared_memory_region(handle, [x])
    expected = expected_logits(server, x)
    outcomes: list[str] = []

    def load():
        own = tgrpc.InferenceServerClient(server.grpc_url)
        for _ in range(40):
            try:
                shm_infer(own, tgrpc, name)
                outcomes.append("answered")
            except tgrpc.InferenceServerException as exc:
                assert exc.status() == "StatusCode.INVALID_ARGUMENT" and "not registered" in exc.message(), exc
                outcomes.append("refused")

    for _ in range(3):
        client.register_system_shared_memory(name, key, INPUT_BYTES + OUTPUT_BYTES)
        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        client.unregister_system_shared_memory(name)
        for t in threads:
            t.join(60)
    assert len(outcomes) == 3 * 3 * 40 and "refused" in outcomes
    np.testing.assert_allclose(shm.get_contents_as_numpy(handle, np.float32, [IMAGES, 10], offset=INPUT_BYTES), expected, rtol=1e-6)
    assert client.is_server_live() and client.get_system_shared_memory_status().regions == {}


def test_data_in_the_request_and_a_region_at_once_is_refused(server, region):
    name, key, handle = region
    client = clients(server)["grpc"]
    client.register_system_shared_memory(name, key, INPUT_BYTES + OUTPUT_BYTES)
    try:
        tensor = tgrpc.InferInput("input", [IMAGES, *SYNTHETIC_SHAPE], "FP32")
        tensor.set_data_from_numpy(pixels())
        request_parameters = {"shared_memory_region": name, "shared_memory_byte_size": INPUT_BYTES}
        body = {"inputs": [{"name": "input", "shape": [IMAGES, *SYNTHETIC_SHAPE], "datatype": "FP32", "data": pixels().ravel().tolist(),
                            "parameters": request_parameters}]}
        status, _, answer = http("POST", server.url + f"/v2/models/{LINEAR}/infer", json.dumps(body).encode(), {"Content-Type": "application/json"})
        assert status == 400 and "send one" in json.loads(answer)["error"], answer
    finally:
        client.unregister_system_shared_memory(name)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_cuda_shared_memory_is_refused_as_unsupported(server, protocol):
    client = clients(server)[protocol]
    error = {"http": thttp, "grpc": tgrpc}[protocol].InferenceServerException
    with pytest.raises(error, match="CUDA shared memory is not supported") as caught:
        client.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 64)
    assert caught.value.status() == ("400" if protocol == "http" else "StatusCode.UNIMPLEMENTED")
    client.unregister_cuda_shared_memory()  # perf_analyzer's clean-up: succeeds, nothing is registered
    assert not client.get_cuda_shared_memory_status() or not client.get_cuda_shared_memory_status().regions


def test_the_server_lists_the_extension(server):
    assert "system_shared_memory" in server.get_json("/v2")[1]["extensions"]
    status, _, body = http("POST", server.url + SYSTEM + "/region/x/register", b"{}", {"Content-Type": "application/json"})
    assert status == 400 and "key" in json.loads(body)["error"], body


def test_the_guides_example_runs(server, tmp_path):
    """docs/guides/perf-analyzer-and-shared-memory.md's tritonclient example, run as written against this server."""
    guide = (Path(__file__).resolve().parents[1] / "docs" / "guides" / "perf-analyzer-and-shared-memory.md").read_text()
    example = guide.split("```python\n", 1)[1].split("```", 1)[0].replace("127.0.0.1:8000", server.url.removeprefix("http://"))
    x = pixels()
    scope = {"pixels": x, "input_bytes": x.nbytes, "output_bytes": OUTPUT_BYTES}
    exec(compile(example, "guide", "exec"), scope)  # noqa: S102 - the documented example itself
    try:
        np.testing.assert_allclose(scope["logits"], expected_logits(server, x), rtol=1e-6)
    finally:
        shm.destroy_shared_memory_region(scope["handle"])
