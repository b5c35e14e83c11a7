"""Fuzzing a real `elunet serve`: hypothesis-generated requests over every route, the binary extension, compressed
bodies, image files in every Pillow mode with broken encodings, gRPC, and slow or mis-sized bodies.

Every answer must come within a bound (no hang), be below 500, and, when JSON, be valid JSON (no NaN);
health is probed on new connections throughout and must answer every time. Derandomized: each run sends the
same cases, so that a failure reproduces.
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import threading
import time
import zlib
from http.client import HTTPConnection
from urllib.parse import quote

import numpy as np
import pytest
from fixtures_serve import LINEAR, SYNTHETIC_SHAPE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

pytestmark = pytest.mark.slow

LIMIT = 256 * 1024
ANSWER_WITHIN_S = 15.0
FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def server(start_server, synthetic_repository):
    server = start_server(
        synthetic_repository, allow_unverified=True, max_body_bytes=LIMIT, body_timeout_s=2, header_timeout_s=2,
        model_control_mode="explicit", load_model="*",
    )
    health = HealthWatch(server.port)
    yield server
    assert health.stop() == [], "health went unanswered while fuzzing"
    log = server.log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]


class HealthWatch(threading.Thread):
    """/v2/health/live on a new connection every 200 ms, each to be answered 200 within 1 s."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.failures, self._stop_event = port, [], threading.Event()
        self.start()

    def run(self):
        while not self._stop_event.wait(0.2):
            try:
                conn = HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/v2/health/live")
                status = conn.getresponse().status
                conn.close()
                if status != 200:
                    self.failures.append(status)
            except OSError as exc:
                self.failures.append(repr(exc))

    def stop(self) -> list:
        self._stop_event.set()
        self.join()
        return self.failures


def send(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, bytes]:
    conn = HTTPConnection("127.0.0.1", port, timeout=ANSWER_WITHIN_S)
    path = quote(path, safe="/%?=&")  # a request line is ASCII: "²" travels as %C2%B2
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        content = response.read()
        status, kind = response.status, response.getheader("content-type", "")
    finally:
        conn.close()
    assert status < 500, (method, path, headers, body[:300], status, content[:500])
    if kind.startswith("application/json") and content:
        json.loads(content, parse_constant=_not_json)
    return status, content


def _not_json(constant):
    raise AssertionError(f"{constant} in a JSON answer")


# --- strategies ---------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
datatypes = st.sampled_from(["FP32", "FP16", "UINT8", "FP64", "INT64", "BYTES", "BOOL", "fp32", ""]) | st.text(max_size=6)
names = st.sampled_from(["input", "logits", "", "INPUT"]) | st.text(max_size=10)
shapes = st.one_of(
    st.just([1, *SYNTHETIC_SHAPE]), st.lists(st.integers(-3, 2**40), max_size=9), st.lists(st.integers(0, 9), min_size=4, max_size=4),
)
parameters = st.dictionaries(st.sampled_from(["binary_data_output", "timeout", "binary_data", "classification", "binary_data_size", "x"]), scalars, max_size=3)


@st.composite
def data_for(draw, shape):
    count = int(np.prod(shape)) if shape and all(0 <= d <= 64 for d in shape) else draw(st.integers(0, 70))
    count = min(count, 300)
    kind = draw(st.sampled_from(["floats", "ints", "mixed", "nested"]))
    if kind == "floats":
        return draw(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=count, max_size=count))
    if kind == "ints":
        return draw(st.lists(st.integers(-300, 300), min_size=count, max_size=count))
    if kind == "nested":
        return np.round(np.random.default_rng(draw(st.integers(0, 99))).random(count), 3).reshape(-1, 1).tolist()
    return draw(st.lists(scalars, max_size=8))


@st.composite
def infer_requests(draw):
    shape = draw(shapes)
    tensor = {"name": draw(names), "shape": shape, "datatype": draw(datatypes), "data": draw(data_for(shape))}
    for key in draw(st.sets(st.sampled_from(["name", "shape", "datatype", "data"]), max_size=1)):
        tensor[key] = draw(json_values)  # one field of the wrong type or missing
    if draw(st.booleans()):
        tensor["parameters"] = draw(parameters)
    request = {"inputs": draw(st.sampled_from([[tensor], [tensor, tensor], []]))}
    if draw(st.booleans()):
        request["parameters"] = draw(parameters)
    if draw(st.booleans()):
        request["outputs"] = [{"name": draw(names), "parameters": draw(parameters)}]
    if draw(st.booleans()):
        request["id"] = draw(json_values)
    return request


# --- the fuzz tests -------------------------------------------------------------------------


@FUZZ
@given(request=infer_requests(), version=st.sampled_from(["", "/versions/1", "/versions/²", "/versions/" + "9" * 30, "/versions/-1"]))
def test_json_infer_requests(server, request, version):
    send(server.port, "POST", f"/v2/models/{LINEAR}{version}/infer", json.dumps(request).encode(), {"Content-Type": "application/json"})


@FUZZ
@given(
    header=infer_requests() | json_values,
    binary=st.binary(max_size=2048) | st.just(np.full((1, *SYNTHETIC_SHAPE), 0.5, np.float32).tobytes()),
    declared=st.sampled_from(["exact", "zero", "negative", "text", "beyond"]),
)
def test_binary_extension_requests(server, header, binary, declared):
    head = json.dumps(header).encode()
    length = {"exact": str(len(head)), "zero": "0", "negative": "-4", "text": "abc", "beyond": str(len(head) + len(binary) + 1)}[declared]
    send(server.port, "POST", f"/v2/models/{LINEAR}/infer", head + binary,
         {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": length})


@FUZZ
@given(request=infer_requests(), encoding=st.sampled_from(["gzip", "deflate", "br", "identity", "gzip, deflate"]), garbage=st.booleans())
def test_compressed_bodies(server, request, encoding, garbage):
    raw = json.dumps(request).encode()
    body = b"\x1f\x8b" + raw[:20] if garbage else gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw) if encoding == "deflate" else raw
    send(server.port, "POST", f"/v2/models/{LINEAR}/infer", body, {"Content-Type": "application/json", "Content-Encoding": encoding})


ROUTES = [
    ("GET", "/v2"), ("GET", "/v2/health/live"), ("GET", "/v2/health/ready"), ("GET", "/v2/models/{m}"), ("GET", "/v2/models/{m}/ready"),
    ("GET", "/v2/models/{m}/config"), ("GET", "/v2/models/{m}/stats"), ("GET", "/v2/models/stats"), ("GET", "/v2/models/{m}/versions/{v}"),
    ("GET", "/v2/models/{m}/versions/{v}/ready"), ("GET", "/v2/models/{m}/versions/{v}/stats"), ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/{m}/load"), ("POST", "/v2/repository/models/{m}/unload"), ("POST", "/v1/models/{m}/classify"),
    ("GET", "/metrics"), ("GET", "/openapi.json"), ("DELETE", "/v2/models/{m}"), ("PUT", "/v2/models/{m}/infer"),
]
models = st.sampled_from([LINEAR, "synthetic-faulty", "nope", "..", "%2e%2e", "a%2Fb", "²", "x" * 300]) | st.text(
    st.characters(codec="utf-8", exclude_characters="/?#"), min_size=1, max_size=12
)
versions = st.sampled_from(["1", "2", "0", "²", "①", "9" * 4400, "-1", "1.0", "01"]) | st.text(st.characters(codec="utf-8", exclude_characters="/?#"), min_size=1, max_size=6)


@FUZZ
@given(route=st.sampled_from(ROUTES), model=models, version=versions, body=json_values, trailing=st.booleans())
def test_every_route(server, route, model, version, body, trailing):
    if route[1].endswith(("/load", "/unload")) and model == LINEAR:
        model = "synthetic-faulty"  # keep the served model loaded for the other cases
    method, template = route
    path = template.replace("{m}", quote(model, safe="%")).replace("{v}", quote(version, safe="")) + ("/" if trailing else "")
    send(server.port, method, path, json.dumps(body).encode() if method != "GET" else b"", {"Content-Type": "application/json"})


def _pillow_images():
    """(mode, format, bytes) for every mode Pillow can save in some format."""
    rng = np.random.default_rng(11)
    out = []
    for mode in Image.MODES:
        image = Image.new(mode, (13, 9))
        if mode in ("L", "RGB", "RGBA", "P", "1"):
            image = Image.fromarray(rng.integers(0, 256, (9, 13, 3) if mode != "L" else (9, 13), dtype=np.uint8)).convert(mode)
        for fmt in ("PNG", "TIFF", "WEBP", "BMP", "JPEG", "GIF"):
            buf = io.BytesIO()
            try:
                image.save(buf, format=fmt)
            except (OSError, ValueError, KeyError):
                continue
            out.append((mode, fmt, buf.getvalue()))
    return out


PILLOW_IMAGES = _pillow_images()


@FUZZ
@given(
    image=st.sampled_from(PILLOW_IMAGES),
    damage=st.sampled_from(["none", "truncate", "flip", "prefix"]),
    where=st.floats(0, 1),
    top_k=st.sampled_from(["1", "3", "²", "0", "abc", "99999999999"]),
)
def test_image_files_in_every_mode_and_broken(server, image, damage, where, top_k):
    _, fmt, data = image
    cut = int(len(data) * where)
    if damage == "truncate":
        data = data[:cut]
    elif damage == "flip":
        data = data[:cut] + bytes([data[cut] ^ 0xFF]) + data[cut + 1 :] if cut < len(data) else data
    elif damage == "prefix":
        data = b"\0" * 8 + data
    boundary = "fuzzboundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="x.{fmt.lower()}"\r\n\r\n'.encode() + data
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n{top_k}\r\n--{boundary}--\r\n'.encode()
    )
    send(server.port, "POST", f"/v1/models/{LINEAR}/classify", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def test_every_pillow_mode_is_converted_or_refused_with_415(server):
    """Each image, undamaged: 200, or 415 naming its mode; nothing else."""
    answers = {}
    for mode, fmt, data in PILLOW_IMAGES:
        boundary = "b"
        body = f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="x"\r\n\r\n'.encode() + data + f"\r\n--{boundary}--\r\n".encode()
        status, content = send(server.port, "POST", f"/v1/models/{LINEAR}/classify", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        answers[(mode, fmt)] = status
        assert status == 200 or (status == 415 and "mode" in json.loads(content)["error"]), (mode, fmt, content)
    assert len(answers) >= 20 and list(answers.values()).count(200) >= 15, answers


@settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(declared=st.integers(0, 2 * LIMIT), sent=st.integers(0, 2 * LIMIT), pause=st.sampled_from([0.0, 0.2]))
def test_mis_sized_and_slow_bodies_are_answered_within_the_body_timeout(server, declared, sent, pause):
    with socket.create_connection(("127.0.0.1", server.port), timeout=ANSWER_WITHIN_S) as s:
        s.sendall(f"POST /v2/models/{LINEAR}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n".encode())
        time.sleep(pause)
        try:
            s.sendall(b"{" * sent)
        except OSError:
            pass  # the server answered and closed already
        t0 = time.monotonic()
        answer = b""
        try:
            while not answer.count(b"\r\n\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except ConnectionResetError:
            pass
    assert time.monotonic() - t0 < 5.0
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None
    assert status is None or status < 500, answer[:300]
    assert status is not None or sent > declared, f"no answer for {declared} declared, {sent} sent"


@FUZZ
@given(
    datatype=datatypes, shape=st.lists(st.integers(-2, 70), max_size=6), raw=st.lists(st.binary(max_size=600), max_size=2),
    floats=st.lists(st.floats(width=32), max_size=70), version=st.sampled_from(["", "1", "²", "9" * 40]),
)
def test_grpc_infer_requests(server, datatype, shape, raw, floats, version):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name=LINEAR, model_version=version)
        tensor = request.inputs.add(name="input", datatype=datatype, shape=shape)
        if raw:
            request.raw_input_contents.extend(raw)
        else:
            tensor.contents.fp32_contents.extend(floats)
        try:
            stub.ModelInfer(request, timeout=ANSWER_WITHIN_S)
        except grpc.RpcError as exc:
            assert exc.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED), exc.details()
