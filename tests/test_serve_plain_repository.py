"""A plain Triton model repository: a Triton user's own ONNX image classifier and config.pbtxt, no card.json.

The models are exported here by plain ``torch.onnx.export`` with their own tensor names, and each
config.pbtxt is written by hand, as a Triton user writes it, with its own label_filename. They serve
through V2 (HTTP and gRPC, real tritonclient) as unverified models, only where allowed, and answer
what ONNX Runtime computes on the same file.
"""

from __future__ import annotations

import base64
import io
import json
import time

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from fixtures_serve import http
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc

torch = pytest.importorskip("torch")

NCHW, NHWC, TENSOR = "plain-classifier", "plain-nhwc", "plain-tensor"
INPUT, OUTPUT = "pixel_values", "scores"
SIZE, CLASSES = 16, 5
FLOWERS = ["daisy", "dandelion", "rose", "sunflower", "tulip"]

CONFIG = """\
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{input}"
    data_type: TYPE_FP32
    {format}
    dims: [ {input_dims} ]
  }}
]
output [
  {{
    name: "{output}"
    data_type: TYPE_FP32
    dims: [ {classes} ]
    {labels}
  }}
]
"""


class Classifier(torch.nn.Module):
    """A small CNN over [n, 3, H, W]; ``channels_last`` takes [n, H, W, 3] instead (permuted inside the graph)."""

    def __init__(self, channels_last: bool = False, two_outputs: bool = False):
        super().__init__()
        torch.manual_seed(3)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ELU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
        self.head = torch.nn.Linear(24, CLASSES)
        self.channels_last, self.two_outputs = channels_last, two_outputs

    def forward(self, x):
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        scores = self.head(self.features(x))
        return (scores, scores.softmax(-1)) if self.two_outputs else scores


def export(model: torch.nn.Module, path, example_shape, outputs=(OUTPUT,)) -> None:
    """As a Triton user exports a model: torch.onnx with names of their own and a dynamic batch axis (torch's default
    exporter keeps the weights beside the file, in model.onnx.data, which the server must find)."""
    path.parent.mkdir(parents=True)
    torch.onnx.export(model.eval(), (torch.zeros(example_shape),), str(path), input_names=[INPUT], output_names=list(outputs),
                      dynamic_axes={name: {0: "batch"} for name in (INPUT, *outputs)}, opset_version=17)


def write_model(root, name: str, *, model: Classifier | None = None, example_shape=(1, 3, SIZE, SIZE), config: bool = True,
                max_batch_size: int = 8, image_format: str | None = "FORMAT_NCHW", input_dims=(3, SIZE, SIZE), labels: str | None = "flowers.txt",
                write_labels: bool = True, outputs=(OUTPUT,)):
    folder = root / name
    export(model or Classifier(), folder / "1" / "model.onnx", example_shape, outputs)
    if config:
        (folder / "config.pbtxt").write_text(CONFIG.format(
            name=name, max_batch_size=max_batch_size, input=INPUT, output=OUTPUT, classes=CLASSES,
            format=f"format: {image_format}" if image_format else "", input_dims=", ".join(map(str, input_dims)),
            labels=f'label_filename: "{labels}"' if labels else ""))
    if labels and write_labels:
        (folder / labels).write_text("".join(f"{label}\n" for label in FLOWERS))
    return folder / "1" / "model.onnx"


@pytest.fixture(scope="module")
def plain_repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("plain-repository")
    write_model(root, NCHW)
    write_model(root, NHWC, model=Classifier(channels_last=True), example_shape=(1, SIZE, SIZE, 3), image_format="FORMAT_NHWC",
                input_dims=(SIZE, SIZE, 3))
    return root


@pytest.fixture(scope="module")
def plain_server(start_server, plain_repository):
    return start_server(plain_repository, allow_unverified=True, instances=1)


def onnxruntime_scores(model_file, x: np.ndarray) -> np.ndarray:
    """What ONNX Runtime computes on the model file itself, by its own names."""
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {INPUT: x})[0]


def pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


def test_served_answers_are_onnx_runtimes_over_http_and_grpc(plain_server, plain_repository):
    x = pixels(4)
    expected = onnxruntime_scores(plain_repository / NCHW / "1" / "model.onnx", x)

    client = thttp.InferenceServerClient(plain_server.url.removeprefix("http://"))
    for binary in (True, False):
        tensor = thttp.InferInput(INPUT, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        result = client.infer(NCHW, [tensor], outputs=[thttp.InferRequestedOutput(OUTPUT, binary_data=binary)])
        np.testing.assert_allclose(result.as_numpy(OUTPUT), expected, rtol=1e-5, atol=1e-5)

    grpc_client = tgrpc.InferenceServerClient(plain_server.grpc_url)
    tensor = tgrpc.InferInput(INPUT, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = grpc_client.infer(NCHW, [tensor], outputs=[tgrpc.InferRequestedOutput(OUTPUT)])
    np.testing.assert_allclose(result.as_numpy(OUTPUT), expected, rtol=1e-5, atol=1e-5)

    # NHWC: the request carries [n, H, W, C], as its config declares, straight to the model.
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    tensor = tgrpc.InferInput(INPUT, list(nhwc.shape), "FP32")
    tensor.set_data_from_numpy(nhwc)
    result = grpc_client.infer(NHWC, [tensor])
    np.testing.assert_allclose(result.as_numpy(OUTPUT), onnxruntime_scores(plain_repository / NHWC / "1" / "model.onnx", nhwc), rtol=1e-5, atol=1e-5)


def test_elunets_tensor_names_are_refused_with_the_models_own(plain_server):
    status, _, body = http("POST", f"{plain_server.url}/v2/models/{NCHW}/infer", json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": [0.5] * (3 * SIZE * SIZE)}]}).encode())
    assert status == 400 and f"expected exactly one input named {INPUT!r}" in json.loads(body)["error"]
    status, _, body = http("POST", f"{plain_server.url}/v2/models/{NCHW}/infer", json.dumps(
        {"inputs": [{"name": INPUT, "shape": [1, SIZE, SIZE, 3], "datatype": "FP32", "data": [0.5] * (3 * SIZE * SIZE)}]}).encode())
    assert status == 400 and f"expected [-1, 3, {SIZE}, {SIZE}]" in json.loads(body)["error"]


def test_metadata_names_its_tensors_and_says_unverified(plain_server):
    status, metadata = plain_server.get_json(f"/v2/models/{NCHW}")
    assert status == 200
    assert metadata["inputs"] == [{"name": INPUT, "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}]
    assert metadata["outputs"] == [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, CLASSES]}]
    assert metadata["parameters"]["parity"] == "unverified"
    assert metadata["parameters"]["image_input"] == f"NCHW RGB {SIZE}x{SIZE}, pixels in [0, 1]"
    assert plain_server.get_json(f"/v2/models/{NHWC}")[1]["parameters"]["image_input"] == f"NHWC RGB {SIZE}x{SIZE}, pixels in [0, 1]"

    with grpc.insecure_channel(plain_server.grpc_url) as channel:
        response, call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelMetadata.with_call(service_pb2.ModelMetadataRequest(name=NCHW))
    assert [(t.name, list(t.shape)) for t in response.inputs] == [(INPUT, [-1, 3, SIZE, SIZE])]
    assert [(t.name, list(t.shape)) for t in response.outputs] == [(OUTPUT, [-1, CLASSES])]
    assert ("elunet-parity", "unverified") in call.initial_metadata()

    status, config = plain_server.get_json(f"/v2/models/{NCHW}/config")
    assert status == 200 and config["output"][0]["label_filename"] == "flowers.txt" and config["input"][0]["format"] == "FORMAT_NCHW"


def test_classify_decodes_images_as_the_config_declares_and_answers_its_labels(plain_server, plain_repository):
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(3)]
    files = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image, "RGB").save(buffer, format="PNG")
        files.append(base64.b64encode(buffer.getvalue()).decode())
    # The image's size is the input's: decoded without resizing, pixels / 255, in NCHW.
    x = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    scores = onnxruntime_scores(plain_repository / NCHW / "1" / "model.onnx", x)
    best = np.argsort(-scores, axis=1, kind="stable")[:, :2]

    answers = {}
    for name in (NCHW, NHWC):
        status, _, body = http("POST", f"{plain_server.url}/v1/models/{name}/classify", json.dumps({"images": files, "top_k": 2}).encode(),
                               {"Content-Type": "application/json"})
        assert status == 200, body
        answers[name] = [[(t["label"], t["index"]) for t in p["top"]] for p in json.loads(body)["predictions"]]
    assert answers[NCHW] == [[(FLOWERS[i], int(i)) for i in row] for row in best]
    assert answers[NHWC] == answers[NCHW]  # the same weights: the same answer, whichever layout the input takes

    # Triton's classification extension over V2 answers the label_filename's labels too.
    client = tgrpc.InferenceServerClient(plain_server.grpc_url)
    tensor = tgrpc.InferInput(INPUT, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(NCHW, [tensor], outputs=[tgrpc.InferRequestedOutput(OUTPUT, class_count=2)])
    ranked = [[entry.decode().split(":") for entry in row] for row in result.as_numpy(OUTPUT)]
    assert [[(label, int(index)) for _, index, label in row] for row in ranked] == answers[NCHW]


def index_of(server, name: str, timeout: float = 60) -> dict:
    """The repository index row of ``name`` once it is no longer loading."""
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = http("POST", f"{server.url}/v2/repository/index", b"{}")
        rows = [r for r in json.loads(body) if r["name"] == name] if status == 200 else []
        if rows and rows[0]["state"] != "LOADING" or time.monotonic() > deadline:
            return rows[0] if rows else {}
        time.sleep(0.2)


def test_plain_models_serve_only_where_allowed(start_server, plain_repository):
    server = start_server(plain_repository, allow_unverified=NHWC, strict_readiness=False, instances=1)
    assert index_of(server, NHWC)["state"] == "READY"
    refused = index_of(server, NCHW)
    assert refused["state"] == "UNAVAILABLE"
    assert "plain Triton model" in refused["reason"] and "--allow-unverified true" in refused["reason"]
    assert f"--allow-unverified {NCHW}" in refused["reason"]


def test_poll_mode_reloads_a_plain_model_whose_label_file_changed(start_server, tmp_path):
    write_model(tmp_path, NCHW)
    server = start_server(tmp_path, model_control_mode="poll", repository_poll_secs=0.5, allow_unverified=True, instances=1)
    client = tgrpc.InferenceServerClient(server.grpc_url)
    tensor = tgrpc.InferInput(INPUT, [1, 3, SIZE, SIZE], "FP32")
    tensor.set_data_from_numpy(pixels(1, seed=11))

    def top_label() -> str:
        result = client.infer(NCHW, [tensor], outputs=[tgrpc.InferRequestedOutput(OUTPUT, class_count=1)])
        return result.as_numpy(OUTPUT)[0][0].decode().split(":")[2]

    before = top_label()
    assert before in FLOWERS
    (tmp_path / NCHW / "flowers.txt").write_text("".join(f"renamed-{label}\n" for label in FLOWERS))
    deadline = time.monotonic() + 30
    while (label := top_label()) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert label == f"renamed-{before}"


@pytest.fixture(scope="module")
def odd_repository(tmp_path_factory):
    """One plain model that serves (no image format, no labels) beside plain models that cannot, each for its own reason."""
    root = tmp_path_factory.mktemp("odd-repository")
    write_model(root, TENSOR, image_format=None, labels=None)
    write_model(root, "no-config", config=False)
    write_model(root, "no-batch", max_batch_size=0)
    write_model(root, "missing-labels", write_labels=False)
    write_model(root, "wrong-dims", input_dims=(3, SIZE, SIZE + 1))
    write_model(root, "two-outputs", model=Classifier(two_outputs=True), outputs=(OUTPUT, "probabilities"))
    return root


REFUSALS = {
    "no-config": "a plain Triton model needs its config.pbtxt (elunet does not auto-complete a configuration from the model file)",
    "no-batch": "max_batch_size is 0 (no batch axis), which elunet does not serve",
    "missing-labels": "label_filename flowers.txt does not exist in the model folder",
    "wrong-dims": f"input '{INPUT}' dims are [3, {SIZE}, {SIZE + 1}], the model's are [3, {SIZE}, {SIZE}]",
    "two-outputs": "elunet serves models with exactly one input and one output",
}


def test_what_cannot_serve_says_why_and_a_tensor_input_serves_without_classify(start_server, odd_repository):
    server = start_server(odd_repository, allow_unverified=True, strict_readiness=False, instances=1)
    assert index_of(server, TENSOR)["state"] == "READY"
    for name, reason in REFUSALS.items():
        row = index_of(server, name)
        assert row["state"] == "UNAVAILABLE" and reason in row["reason"], row

    # No image input: no image_input in its metadata, and /v1 classify says why it refuses.
    assert "image_input" not in server.get_json(f"/v2/models/{TENSOR}")[1]["parameters"]
    buffer = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE)).save(buffer, format="PNG")
    status, _, body = http("POST", f"{server.url}/v1/models/{TENSOR}/classify",
                           json.dumps({"images": [base64.b64encode(buffer.getvalue()).decode()]}).encode(), {"Content-Type": "application/json"})
    assert status == 400 and "has no image input" in json.loads(body)["error"] and "FORMAT_NCHW" in json.loads(body)["error"]

    # Without labels, Triton's classification answers "value:index".
    x = pixels(2, seed=9)
    client = tgrpc.InferenceServerClient(server.grpc_url)
    tensor = tgrpc.InferInput(INPUT, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(TENSOR, [tensor], outputs=[tgrpc.InferRequestedOutput(OUTPUT, class_count=1)])
    expected = onnxruntime_scores(odd_repository / TENSOR / "1" / "model.onnx", x)
    assert [row[0].decode().split(":")[1] for row in result.as_numpy(OUTPUT)] == [str(i) for i in expected.argmax(1)]
    assert all(len(row[0].decode().split(":")) == 2 for row in result.as_numpy(OUTPUT))


@pytest.mark.parametrize(("given", "allowed"), [("true", {NCHW, NHWC, "other"}), ("false", set()), (f"{NHWC}", {NHWC}),
                                                (f" {NCHW}, {NHWC} ", {NCHW, NHWC}), ([f"{NCHW},{NHWC}"], {NCHW, NHWC}), (True, {NCHW, NHWC, "other"})])
def test_allow_unverified_is_a_boolean_or_model_names(given, allowed, tmp_path):
    from elunet.serve.settings import load_settings

    settings = load_settings({"repository": tmp_path, "allow_unverified": given}, environ={})
    assert {name for name in (NCHW, NHWC, "other") if settings.unverified_allowed(name)} == allowed


def test_allow_unverified_refuses_what_is_no_model_name(tmp_path):
    from elunet.errors import ElunetError
    from elunet.serve.settings import load_settings

    with pytest.raises(ElunetError, match=r"invalid model name '\.\./x': give true, false or model names"):
        load_settings({"repository": tmp_path, "allow_unverified": "ok,../x"}, environ={})
