"""Images through V2: an image model (``elunet export --image-model``) takes encoded image files as BYTES elements.

The wire forms are checked against what tritonclient itself writes (its serializer and request body), then a real
server on a real export is asked by tritonclient over HTTP and gRPC, by a plain JSON body, and by perf_analyzer with
``--input-data`` of base64 JPEGs; its answers must be those of the tensor model on the pixels /v1 classify decodes.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import tritonclient.http as triton_http
from PIL import Image
from tritonclient.utils import serialize_byte_tensor

from elunet.card import Preprocessing
from elunet.contracts import IMAGE_INPUT_NAME
from elunet.serve.errors import ServeError
from elunet.serve.extensions import serialize_bytes
from elunet.serve.tensors import HEADER_LENGTH, base64_elements, bytes_elements, check_image_input, decode_image_infer

PRE = Preprocessing(channels=1, height=28, width=28, color_mode="L", normalization="meanstd")
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
    error = refusal(lambda: check_image_input(names, datatype, shape, IMAGE_INPUT_NAME))
    assert error.status == 400 and expected in error.message
    assert check_image_input([IMAGE_INPUT_NAME], "BYTES", [3, 1], IMAGE_INPUT_NAME) == 3


def tritonclient_body(files: list[bytes], binary: bool = True) -> tuple[bytes, str | None]:
    """The body and header length tritonclient.http sends for an image input holding ``files``."""
    tensor = triton_http.InferInput(IMAGE_INPUT_NAME, [len(files), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=object).reshape(-1, 1), binary_data=binary)
    body, json_size = triton_http.InferenceServerClient.generate_request_body([tensor])
    return body, None if json_size is None else str(json_size)


def test_a_tritonclient_body_decodes_to_the_pixels_of_each_file():
    body, length = tritonclient_body([JPEG, PNG])
    request, pixels = decode_image_infer(body, length, None, 1 << 20, IMAGE_INPUT_NAME, PRE, 10**6)
    assert pixels.shape == (2, 1, 28, 28) and pixels.dtype == np.float32 and request.inputs[0].data is None
    from elunet.serve.images import images_pixels

    np.testing.assert_array_equal(pixels, images_pixels([("a", JPEG), ("b", PNG)], PRE, 10**6))
    as_json = json.dumps({"inputs": [{"name": IMAGE_INPUT_NAME, "datatype": "BYTES", "shape": [2, 1],
                                      "data": [base64.b64encode(f).decode() for f in (JPEG, PNG)]}]}).encode()
    np.testing.assert_array_equal(decode_image_infer(as_json, None, None, 1 << 20, IMAGE_INPUT_NAME, PRE, 10**6)[1], pixels)


def test_bad_image_bodies_are_400_saying_what_was_expected():
    def decoded(body, length):
        return refusal(lambda: decode_image_infer(body, length, None, 1 << 20, IMAGE_INPUT_NAME, PRE, 10**6))

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
