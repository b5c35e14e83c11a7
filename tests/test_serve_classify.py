"""POST /v1/models/{m}/classify: image files and base64 JSON, conversion, resizing, top-k; and tritonclient."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import uuid

import numpy as np
import pytest
import tritonclient.http as triton
from fixtures_serve import LINEAR, SYNTHETIC_LABELS, SYNTHETIC_SHAPE, binary_infer_body, http, parse_infer_response
from PIL import Image

pytestmark = pytest.mark.slow


def encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def multipart(files: list[tuple[str, bytes]], fields: dict | None = None) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n\r\n'.encode() + data + b"\r\n"
        for name, data in files
    ]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in (fields or {}).items()]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def logits_for(url: str, pixels: np.ndarray) -> np.ndarray:
    body, headers = binary_infer_body(pixels)
    status, h, out = http("POST", f"{url}/v2/models/{LINEAR}/infer", body, headers)
    assert status == 200
    return parse_infer_response(h, out)


def expected_top(logits: np.ndarray, k: int) -> list[str]:
    return [SYNTHETIC_LABELS[i] for i in np.argsort(-logits, kind="stable")[:k]]


def test_png_jpeg_webp_files_rgb_and_other_sizes_are_converted_like_the_card_says(synthetic_server):
    rng = np.random.default_rng(3)
    gray = Image.fromarray(rng.integers(0, 256, SYNTHETIC_SHAPE[1:], dtype=np.uint8), mode="L")
    rgb_big = Image.fromarray(rng.integers(0, 256, (32, 24, 3), dtype=np.uint8), mode="RGB")
    files = [("a.png", encode(gray, "PNG")), ("b.jpg", encode(rgb_big, "JPEG")), ("c.webp", encode(gray, "WEBP"))]
    body, headers = multipart(files, {"top_k": 3})
    status, _, out = http("POST", f"{synthetic_server.url}/v1/models/{LINEAR}/classify", body, headers)
    assert status == 200, out
    answer = json.loads(out)
    assert [p["image"] for p in answer["predictions"]] == ["a.png", "b.jpg", "c.webp"]
    # The PNG is lossless and already 8x8 grey: its answer must equal V2 infer on the same pixels.
    pixels = (np.asarray(gray, np.float32) / 255)[None, None]
    top = answer["predictions"][0]["top"]
    assert [s["label"] for s in top] == expected_top(logits_for(synthetic_server.url, pixels)[0], 3)
    for prediction in answer["predictions"]:
        probs = [s["probability"] for s in prediction["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    # The RGB image was converted to grey and resized to 8x8 the way Pillow does it.
    decoded = Image.open(io.BytesIO(files[1][1])).convert("L").resize((8, 8), Image.Resampling.BILINEAR)
    ref = logits_for(synthetic_server.url, (np.asarray(decoded, np.float32) / 255)[None, None])[0]
    assert [s["label"] for s in answer["predictions"][1]["top"]] == expected_top(ref, 3)


def test_base64_json_images(synthetic_server):
    image = Image.fromarray(np.full(SYNTHETIC_SHAPE[1:], 200, np.uint8), mode="L")
    payload = {"images": [base64.b64encode(encode(image, "PNG")).decode()] * 2, "top_k": 10}
    status, _, out = http(
        "POST", f"{synthetic_server.url}/v1/models/{LINEAR}/classify", json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200, out
    predictions = json.loads(out)["predictions"]
    assert [p["image"] for p in predictions] == ["0", "1"]
    assert abs(sum(s["probability"] for s in predictions[0]["top"]) - 1) < 1e-6


@pytest.mark.parametrize(
    "body, content_type, status, text",
    [
        (b"", "text/plain", 415, "Content-Type"),
        (json.dumps({"images": ["%%%"]}).encode(), "application/json", 400, "base64"),
        (json.dumps({"images": [base64.b64encode(b"not an image").decode()]}).encode(), "application/json", 415, "could not be decoded"),
        (json.dumps({"images": []}).encode(), "application/json", 400, "images"),
    ],
)
def test_bad_images_are_400_or_415(synthetic_server, body, content_type, status, text):
    got, _, out = http("POST", f"{synthetic_server.url}/v1/models/{LINEAR}/classify", body, {"Content-Type": content_type})
    assert got == status and text in json.loads(out)["error"]


def test_undecodable_multipart_file_is_415(synthetic_server):
    body, headers = multipart([("x.png", b"\x89PNG broken")])
    status, _, out = http("POST", f"{synthetic_server.url}/v1/models/{LINEAR}/classify", body, headers)
    assert status == 415 and "x.png" in json.loads(out)["error"]


def test_tritonclient_round_trip_binary_and_json(synthetic_server):
    client = triton.InferenceServerClient(synthetic_server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(LINEAR)
    meta = client.get_model_metadata(LINEAR)
    assert meta["inputs"][0]["shape"] == [-1, *SYNTHETIC_SHAPE]
    x = np.random.default_rng(4).random((5, *SYNTHETIC_SHAPE), dtype=np.float32)
    answers = []
    for binary in (True, False):
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        result = client.infer(LINEAR, [tensor], outputs=[triton.InferRequestedOutput("logits", binary_data=binary)])
        answers.append(result.as_numpy("logits"))
    # No outputs named: tritonclient asks for binary_data_output. Also a gzip-compressed request body.
    result = client.infer(LINEAR, [tensor], request_compression_algorithm="gzip")
    answers.append(result.as_numpy("logits"))
    np.testing.assert_array_equal(answers[0], answers[2])
    np.testing.assert_allclose(answers[0], answers[1], rtol=1e-6)
    assert answers[0].shape == (5, 10)
    with pytest.raises(triton.InferenceServerException, match="expected"):
        bad = triton.InferInput("input", [1, 3, 8, 8], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32))
        client.infer(LINEAR, [bad])
    client.close()


def _classify(*args: str):
    return subprocess.run([sys.executable, "-m", "elunet", "classify", *args], capture_output=True, text=True, timeout=60)


def test_elunet_classify_says_what_to_do_for_each_refusal(start_server, synthetic_repository, tmp_path):
    server = start_server(synthetic_repository, allow_unverified=True, api_key="s3cret", max_body_bytes=4096)
    small, large, text = tmp_path / "small.png", tmp_path / "large.png", tmp_path / "notes.txt"
    small.write_bytes(encode(Image.new("L", (28, 28), 128), "PNG"))
    large.write_bytes(encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG"))
    text.write_text("not an image\n")
    base = ["--model", LINEAR, "--url", server.url]

    def refusal(*args: str) -> tuple[str, str]:
        r = _classify(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        error, hint = r.stderr.strip().split("\n  hint: ")
        return error, hint

    error, hint = refusal(str(small), *base)
    assert error.startswith("error: server answered 401") and "--api-key KEY or set ELUNET_API_KEY" in hint
    error, hint = refusal(str(large), *base, "--api-key", "s3cret")
    body = len(large.read_bytes())
    assert error.startswith("error: server answered 413")
    assert "--max-body-bytes (env ELUNET_MAX_BODY_BYTES" in hint and "binary tensor extension" in hint
    assert int(hint.split("body was ")[1].split()[0]) > body  # the whole multipart body, not the file alone
    error, hint = refusal(str(text), *base, "--api-key", "s3cret")
    assert error.startswith("error: server answered 415") and "PNG, JPEG" in hint and "multipart/form-data" in hint
    error, hint = refusal(str(small), "--model", LINEAR, "--url", server.url.removeprefix("http://"))
    assert "is not an http:// or https:// address" in error and f"--url {server.url}" in hint
    hints = {refusal(*a)[1] for a in [(str(small), *base), (str(large), *base, "--api-key", "s3cret"), (str(text), *base, "--api-key", "s3cret")]}
    assert len(hints) == 3, "each refusal has its own hint"
    r = _classify(str(small), *base, "--api-key", "s3cret")
    assert r.returncode == 0 and r.stdout.startswith("small.png: "), r.stderr
