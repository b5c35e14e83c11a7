"""Images through V2: an image model (``elunet export --image-model``) takes encoded image files as BYTES elements.

The wire forms are checked against what tritonclient itself writes (its serializer and request body), then a real
server on a real export is asked by tritonclient over HTTP and gRPC, by a plain JSON body, and by perf_analyzer with
``--input-data`` of base64 JPEGs; its answers must be those of the tensor model on the pixels /v1 classify decodes.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from fixtures_docs import REPO_ROOT
from fixtures_serve import http, synthetic_card
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc
from test_serve_perf_analyzer import SCRIPT, WINDOWS, last_figure, perf_analyzer_installed  # noqa: F401 - the fixture is used by name
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from elunet.contracts import IMAGE_INPUT_NAME, INPUT_NAME, OUTPUT_NAME
from elunet.export.repository_writer import publish_image_model, stage_version
from elunet.model_config import IMAGE_INPUT, TensorSignature, build_config, declared_image_input, differences, read_config
from elunet.repository import CONFIG_FILE, ModelRepository, image_model_name
from elunet.serve.errors import ServeError
from elunet.serve.extensions import serialize_bytes
from elunet.serve.images import images_pixels
from elunet.serve.interface import ImageInput
from elunet.serve.tensors import HEADER_LENGTH, base64_elements, bytes_elements, check_image_input, decode_image_infer

PRE = ImageInput(channels=1, height=28, width=28, color_mode="L")
WHAT = f"input {IMAGE_INPUT_NAME!r}"


def encoded(format: str, size=(64, 48), seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=format)
    return out.getvalue()


JPEG, PNG = encoded("JPEG"), encoded("PNG", seed=1)


def refusal(call) -> ServeError:
    with pytest.raises(ServeError) as raised:
        call()
    return raised.value


# --- the wire forms, as pure functions -----------------------------------------------------------------------------


def test_binary_bytes_elements_read_what_tritonclient_serializes():
    files = [JPEG, PNG, b"", b"\x00" * 3]
    serialized = serialize_byte_tensor(np.array(files, dtype=object)).item()
    assert bytes_elements(serialized, WHAT) == files
    assert serialize_bytes(np.array(bytes_elements(serialized, WHAT), dtype=object)) == serialized
    assert bytes_elements(b"", WHAT) == []


@pytest.mark.parametrize("raw, expected", [
    (b"\x05\x00\x00", "element 0 starts at byte 0 with 3 bytes left, fewer than its 4-byte length"),
    ((3).to_bytes(4, "little") + b"abc" + b"\x01", "element 1 starts at byte 7 with 1 bytes left"),
    ((1000).to_bytes(4, "little") + b"abc", "element 0 declares 1000 bytes, but only 3 follow its length"),
])
def test_broken_binary_bytes_say_which_element_and_where(raw, expected):
    error = refusal(lambda: bytes_elements(raw, WHAT))
    assert error.status == 400 and expected in error.message and WHAT in error.message


def test_json_bytes_elements_are_base64_files_flat_or_nested():
    texts = [base64.b64encode(f).decode() for f in (JPEG, PNG)]
    assert base64_elements(texts, WHAT) == [JPEG, PNG]
    assert base64_elements([[texts[0]], [texts[1]]], WHAT) == [JPEG, PNG]
    not_base64 = refusal(lambda: base64_elements([texts[0], "\u00ff not base64"], WHAT))
    assert not_base64.status == 400 and "element 1 is not base64" in not_base64.message
    number = refusal(lambda: base64_elements([[texts[0]], [3]], WHAT))
    assert "element 1 is a JSON int" in number.message and "string holding an image file in base64" in number.message


@pytest.mark.parametrize("names, datatype, shape, expected", [
    (["input"], "BYTES", [1, 1], "expected exactly one input named 'image'"),
    ([IMAGE_INPUT_NAME, "other"], "BYTES", [1, 1], "received inputs ['image', 'other']"),
    ([IMAGE_INPUT_NAME], "FP32", [1, 1], "has datatype FP32; this image model takes BYTES"),
    ([IMAGE_INPUT_NAME], "BYTES", [2], "has shape [2]; expected [-1, 1]"),
    ([IMAGE_INPUT_NAME], "BYTES", [0, 1], "has shape [0, 1]"),
])
def test_an_image_input_must_be_one_bytes_tensor_of_files(names, datatype, shape, expected):
    error = refusal(lambda: check_image_input(names, datatype, shape, IMAGE_INPUT))
    assert error.status == 400 and expected in error.message
    assert check_image_input([IMAGE_INPUT_NAME], "BYTES", [3, 1], IMAGE_INPUT) == 3


def tritonclient_body(files: list[bytes], binary: bool = True) -> tuple[bytes, str | None]:
    """The body and header length tritonclient.http sends for an image input holding ``files``."""
    tensor = triton_http.InferInput(IMAGE_INPUT_NAME, [len(files), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=object).reshape(-1, 1), binary_data=binary)
    body, json_size = triton_http.InferenceServerClient.generate_request_body([tensor])
    return body, None if json_size is None else str(json_size)


def test_a_tritonclient_body_decodes_to_the_pixels_of_each_file():
    body, length = tritonclient_body([JPEG, PNG])
    request, pixels = decode_image_infer(body, length, None, 1 << 20, IMAGE_INPUT, PRE, 10**6)
    assert pixels.shape == (2, 1, 28, 28) and pixels.dtype == np.float32 and request.inputs[0].data is None
    np.testing.assert_array_equal(pixels, images_pixels([("a", JPEG), ("b", PNG)], PRE, 10**6))
    as_json = json.dumps({"inputs": [{"name": IMAGE_INPUT_NAME, "datatype": "BYTES", "shape": [2, 1],
                                      "data": [base64.b64encode(f).decode() for f in (JPEG, PNG)]}]}).encode()
    np.testing.assert_array_equal(decode_image_infer(as_json, None, None, 1 << 20, IMAGE_INPUT, PRE, 10**6)[1], pixels)


def test_bad_image_bodies_are_400_saying_what_was_expected():
    def decoded(body, length):
        return refusal(lambda: decode_image_infer(body, length, None, 1 << 20, IMAGE_INPUT, PRE, 10**6))

    body, length = tritonclient_body([JPEG, b"GIF89a not really"])
    not_an_image = decoded(body, length)
    assert not_an_image.status == 400 and "image 'image[1]' (17 bytes) could not be decoded" in not_an_image.message
    truncated = decoded(*tritonclient_body([JPEG[: len(JPEG) // 2]]))
    assert truncated.status == 400 and "image[0]" in truncated.message and "truncated" in truncated.message
    head = json.dumps({"inputs": [{"name": IMAGE_INPUT_NAME, "datatype": "BYTES", "shape": [3, 1]}]})
    body, length = tritonclient_body([JPEG, PNG])
    head_length = int(length)
    wrong_count = json.loads(body[:head_length])
    wrong_count["inputs"][0]["shape"] = [3, 1]
    fixed = json.dumps(wrong_count).encode()
    count = decoded(fixed + body[head_length:], str(len(fixed)))
    assert count.status == 400 and "holds 2 BYTES elements; shape [3, 1] needs 3" in count.message
    pixels = np.zeros((1, 1, 28, 28), np.float32)
    as_fp32 = json.dumps({"inputs": [{"name": IMAGE_INPUT_NAME, "datatype": "FP32", "shape": [1, 1, 28, 28],
                                      "parameters": {"binary_data_size": pixels.nbytes}}]}).encode()
    fp32 = decoded(as_fp32 + pixels.tobytes(), str(len(as_fp32)))
    assert fp32.status == 400 and "datatype FP32; this image model takes BYTES" in fp32.message
    raw = decoded(pixels.tobytes(), "0")
    assert raw.status == 400 and f"{HEADER_LENGTH}: 0" in raw.message and "BYTES image files" in raw.message
    assert "no 'data' and no binary_data_size" in decoded(head.encode(), None).message


# --- a real server on a real export ----------------------------------------------------------------------------------

PHOTO = REPO_ROOT / "docs" / "img" / "shirt.png"


@pytest.fixture(scope="module")
def image_repository(exported_repository, tmp_path_factory) -> tuple[Path, str, str]:
    """(a copy of the exported repository with the image model of its version published, tensor model, image model)."""
    root = Path(shutil.copytree(exported_repository, tmp_path_factory.mktemp("images") / "repository"))
    (name,) = ModelRepository(root).models()
    tensor = ModelRepository(root).get(name)
    with stage_version(root, image_model_name(name), tensor.version) as staged:
        config = read_config(root / name / CONFIG_FILE)
        publish_image_model(staged, tensor, platform=config.platform, max_batch_size=config.max_batch_size, io_dtype="fp32")
    return root, name, image_model_name(name)


@pytest.fixture(scope="module")
def server(start_server, image_repository):
    return start_server(image_repository[0], max_batch_size=8)


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """The shirt of the docs as a large JPEG and as it is (PNG): photos, not the model's 28x28."""
    large = io.BytesIO()
    Image.open(PHOTO).convert("RGB").resize((640, 480), Image.Resampling.BICUBIC).save(large, format="JPEG", quality=90)
    return [large.getvalue(), PHOTO.read_bytes()]


def tensor_answer(server, model: str, pixels: np.ndarray, classes: int) -> np.ndarray:
    """What the tensor model answers for ``pixels`` (the classification strings), by tritonclient."""
    client = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = triton_http.InferInput(INPUT_NAME, list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    return client.infer(model, [tensor], outputs=[triton_http.InferRequestedOutput(OUTPUT_NAME, class_count=classes)]).as_numpy(OUTPUT_NAME)


def expected(server, image_repository, photos, classes: int = 3) -> np.ndarray:
    """The tensor model's classification of the pixels the decode makes of ``photos``."""
    root, name, _ = image_repository
    p = ModelRepository(root).get(name).card.preprocessing
    pixels = images_pixels([(str(i), photo) for i, photo in enumerate(photos)], ImageInput(p.channels, p.height, p.width, p.color_mode), 10**8)
    return tensor_answer(server, name, pixels, classes)


def test_the_image_model_describes_its_bytes_input_as_triton_would(server, image_repository):
    _, name, image_name = image_repository
    status, metadata = server.get_json(f"/v2/models/{image_name}")
    assert status == 200 and metadata["inputs"] == [{"name": IMAGE_INPUT_NAME, "datatype": "BYTES", "shape": [-1, 1]}]
    assert metadata["outputs"] == server.get_json(f"/v2/models/{name}")[1]["outputs"]
    config = server.get_json(f"/v2/models/{image_name}/config")[1]
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [(IMAGE_INPUT_NAME, "TYPE_STRING", [1])]
    assert metadata["parameters"]["parity"] == "passed", "the same file, so the same certificate holds"
    assert metadata["parameters"]["image_input"] == server.get_json(f"/v2/models/{name}")[1]["parameters"]["image_input"]


def test_tritonclient_http_sends_images_as_bytes_and_reads_the_labels(server, image_repository, photos):
    client = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    image_name = image_repository[2]
    for binary in (True, False):  # binary_data=False: the JSON form tritonclient cannot write for image bytes, so base64 by hand
        tensor = triton_http.InferInput(IMAGE_INPUT_NAME, [len(photos), 1], "BYTES")
        data = photos if binary else [base64.b64encode(p) for p in photos]
        tensor.set_data_from_numpy(np.array(data, dtype=object).reshape(-1, 1), binary_data=binary)
        labels = client.infer(image_name, [tensor], outputs=[triton_http.InferRequestedOutput(OUTPUT_NAME, class_count=3)]).as_numpy(OUTPUT_NAME)
        assert labels.shape == (2, 3)
        np.testing.assert_array_equal(labels, expected(server, image_repository, photos))


def test_tritonclient_grpc_sends_images_as_bytes_and_reads_the_labels(server, image_repository, photos):
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    tensor = triton_grpc.InferInput(IMAGE_INPUT_NAME, [len(photos), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(photos, dtype=object).reshape(-1, 1))
    result = client.infer(image_repository[2], [tensor], outputs=[triton_grpc.InferRequestedOutput(OUTPUT_NAME, class_count=3)])
    np.testing.assert_array_equal(result.as_numpy(OUTPUT_NAME), expected(server, image_repository, photos))
    # bytes_contents, the typed field, as a client that builds the message itself sends it
    request = service_pb2.ModelInferRequest(model_name=image_repository[2])
    element = request.inputs.add(name=IMAGE_INPUT_NAME, datatype="BYTES", shape=[len(photos), 1])
    element.contents.bytes_contents.extend(photos)
    request.outputs.add(name=OUTPUT_NAME).parameters["classification"].int64_param = 3
    with grpc.insecure_channel(server.grpc_url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    labels = np.array(bytes_elements(response.raw_output_contents[0], "output"), dtype=object).reshape(2, 3)
    np.testing.assert_array_equal(labels, expected(server, image_repository, photos))


def test_a_plain_json_body_carries_images_in_base64(server, image_repository, photos):
    body = {"inputs": [{"name": IMAGE_INPUT_NAME, "datatype": "BYTES", "shape": [1, 1], "data": [base64.b64encode(photos[0]).decode()]}],
            "outputs": [{"name": OUTPUT_NAME, "parameters": {"classification": 3}}]}
    status, _, answer = http("POST", f"{server.url}/v2/models/{image_repository[2]}/infer", json.dumps(body).encode(),
                             {"Content-Type": "application/json"})
    assert status == 200, answer
    assert json.loads(answer)["outputs"][0]["data"] == [v.decode() for v in expected(server, image_repository, photos[:1]).ravel()]


def bad_requests(photos) -> dict[str, tuple[str, list, list, str]]:
    """Name -> (datatype, shape, elements or pixels, what the 400 must say)."""
    return {
        "not an image": ("BYTES", [2, 1], [photos[0], b"%PDF-1.4 not an image"], "image 'image[1]' (21 bytes) could not be decoded: not an image"),
        "truncated": ("BYTES", [1, 1], [photos[0][: len(photos[0]) // 3]], "image 'image[0]'"),
        "wrong count": ("BYTES", [3, 1], photos, "holds 2 BYTES elements; shape [3, 1] needs 3"),
        "pixels sent to the image model": ("FP32", [1, 1, 28, 28], np.zeros((1, 1, 28, 28), np.float32), "has datatype FP32; this image model takes BYTES"),
    }


@pytest.mark.parametrize("case", ["not an image", "truncated", "wrong count", "pixels sent to the image model"])
def test_bad_image_requests_are_400_and_invalid_argument_saying_what_was_expected(server, image_repository, photos, case):
    datatype, shape, data, says = bad_requests(photos)[case]
    values = data if isinstance(data, np.ndarray) else np.array(data, dtype=object).reshape(-1, 1)
    http_client = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = triton_http.InferInput(IMAGE_INPUT_NAME, list(values.shape), datatype)
    tensor.set_data_from_numpy(values)
    if case == "wrong count":  # tritonclient keeps shape and data together: the header is rewritten, as a broken client sends it
        body, length = tritonclient_body(list(data))
        head = json.loads(body[: int(length)])
        head["inputs"][0]["shape"] = shape
        head_bytes = json.dumps(head).encode()
        status, _, answer = http("POST", f"{server.url}/v2/models/{image_repository[2]}/infer", head_bytes + body[int(length):],
                                 {HEADER_LENGTH: str(len(head_bytes))})
        assert status == 400 and says in json.loads(answer)["error"]
        grpc_request = service_pb2.ModelInferRequest(model_name=image_repository[2])
        grpc_request.inputs.add(name=IMAGE_INPUT_NAME, datatype="BYTES", shape=shape)
        grpc_request.raw_input_contents.append(serialize_bytes(np.array(list(data), dtype=object)))
        with grpc.insecure_channel(server.grpc_url) as channel, pytest.raises(grpc.RpcError) as refused:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(grpc_request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and says in refused.value.details()
        return
    with pytest.raises(InferenceServerException) as refused_http:
        http_client.infer(image_repository[2], [tensor])
    assert refused_http.value.status() == "400" and says in refused_http.value.message()
    grpc_tensor = triton_grpc.InferInput(IMAGE_INPUT_NAME, list(values.shape), datatype)
    grpc_tensor.set_data_from_numpy(values)
    with pytest.raises(InferenceServerException) as refused_grpc:
        triton_grpc.InferenceServerClient(server.grpc_url).infer(image_repository[2], [grpc_tensor])
    assert refused_grpc.value.status() == "StatusCode.INVALID_ARGUMENT" and says in refused_grpc.value.message()
    if case == "not an image":
        assert "could not be decoded" in refused_grpc.value.message()


def image_counts(server, model: str) -> tuple[int, int, int]:
    """(successful requests, images inferred, failed requests) of ``model`` so far, from elunet's statistics."""
    status, stats = server.get_json(f"/v2/models/{model}/stats")
    assert status == 200, stats
    version = stats["model_stats"][0]
    return version["inference_stats"]["success"]["count"], version["inference_count"], version["inference_stats"]["fail"]["count"]


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_classifies_b64_jpegs_from_its_input_data(perf_analyzer_installed, server, image_repository, photos, protocol, tmp_path):
    files = []
    for i, photo in enumerate(photos):
        files.append(tmp_path / f"photo-{i}")
        files[-1].write_bytes(photo)
    data = tmp_path / "images.json"
    made = subprocess.run([sys.executable, str(SCRIPT), "--image-data", str(data), *map(str, files)], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    entries = json.loads(data.read_text())["data"]
    assert [bytes_elements(base64.b64decode(e[IMAGE_INPUT_NAME]["b64"]), "b64") for e in entries] == [[p] for p in photos]
    image_name = image_repository[2]
    url = server.url.removeprefix("http://") if protocol == "http" else server.grpc_url
    before = image_counts(server, image_name)
    run = subprocess.run([sys.executable, str(SCRIPT), "--", "-m", image_name, "-u", url, "-i", protocol, "--input-data", str(data),
                          "--concurrency-range", "2", *WINDOWS], capture_output=True, text=True, timeout=180)
    output = run.stdout + run.stderr
    print(output)
    succeeded, inferred, failed = (after - earlier for after, earlier in zip(image_counts(server, image_name), before))
    assert run.returncode == 0, output
    assert failed == 0 and succeeded > 0 and inferred == succeeded, f"{failed} requests failed at the server"
    assert 0 < last_figure(output, "Successful request count") <= succeeded


GUIDE = REPO_ROOT / "docs" / "guides" / "images-through-v2.md"


@pytest.mark.parametrize("index, printed", [(0, "b'"), (1, "b'"), (2, "classes: [")], ids=["tritonclient-http", "tritonclient-grpc", "kserve"])
def test_the_guide_s_client_examples_classify_a_photo(server, image_repository, index, printed):
    """docs/guides/images-through-v2.md's ```python blocks, run as written but for the ports of this test's server."""
    blocks = [block.split("```", 1)[0] for block in GUIDE.read_text().split("```python\n")[1:]]
    assert len(blocks) == 3 and image_repository[2] == "fashion-cnn-elu-image", "the guide names the model `make demo` exports"
    code = blocks[index].replace("127.0.0.1:8000", server.url.removeprefix("http://")).replace("127.0.0.1:8001", server.grpc_url)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert printed in done.stdout, f"what it printed: {done.stdout}"


def test_the_guide_shows_the_perf_analyzer_runs_this_file_makes():
    shown = [line for line in GUIDE.read_text().splitlines() if line.startswith("python scripts/perf_analyzer.py")]
    assert shown[0].startswith("python scripts/perf_analyzer.py --image-data images.json ")
    for protocol, port in (("http", 8000), ("grpc", 8001)):
        assert f"python scripts/perf_analyzer.py -- -m fashion-cnn-elu-image -u 127.0.0.1:{port} -i {protocol} --input-data images.json" in shown


def test_a_config_declaring_string_input_is_an_image_model_held_to_its_one_input():
    card = synthetic_card("m")
    config = build_config(card, name=image_model_name("m"), platform="onnxruntime_onnx", encoded_images=True)
    assert declared_image_input(config) == IMAGE_INPUT and declared_image_input(build_config(card, name="m", platform="onnxruntime_onnx")) is None
    outputs = [TensorSignature(OUTPUT_NAME, "FP32", (card.num_classes,))]
    assert differences(config, name=image_model_name("m"), platforms=["onnxruntime_onnx"], inputs=[IMAGE_INPUT], outputs=outputs) == []
    config.input[0].dims[:] = [2]
    config.input[0].name = "photo"
    found = differences(config, name=image_model_name("m"), platforms=["onnxruntime_onnx"], inputs=[IMAGE_INPUT], outputs=outputs)
    assert found == ["inputs are ['photo'], the model has ['image']"]
    config.input[0].name = IMAGE_INPUT_NAME
    found = differences(config, name=image_model_name("m"), platforms=["onnxruntime_onnx"], inputs=[IMAGE_INPUT], outputs=outputs)
    assert found == ["input 'image' dims are [2], the model's are [1] (without the batch axis)"]
