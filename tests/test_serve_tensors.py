"""The infer body's fast paths (serve/tensors.py) answer exactly what pydantic and numpy would.

JSON requests are parsed by orjson with pydantic validating all but the tensor's numbers, the numbers
are converted through struct, and answers are written by orjson from a dict: each is checked here
against the slow path it replaces, so the protocol types in serve/protocol.py stay the one contract.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from elunet.serve.errors import ServeError
from elunet.serve.protocol import InferenceRequest, InferenceResponse, ResponseOutput
from elunet.serve.tensors import NotANumber, _first_errors, decode_infer, input_pixels, json_values, read_request, response_body

SHAPE = (1, 1, 2)
GOOD = {"id": "r-1", "parameters": {"timeout": 5}, "inputs": [{"name": "input", "shape": [1, 1, 1, 2], "datatype": "FP32", "data": [0.5, 1]}],
        "outputs": [{"name": "logits", "parameters": {"classification": 2}}]}
def _one(data, datatype="FP32", shape=(1, 1, 1, 2)) -> str:
    return '{"inputs": [{"name": "input", "shape": %s, "datatype": "%s", "data": %s}]}' % (list(shape), datatype, data)


BODIES = [
    json.dumps(GOOD),
    json.dumps({**GOOD, "inputs": [{**GOOD["inputs"][0], "data": [[0.5], [1]]}, {"name": "other", "shape": [1], "datatype": "FP32", "data": [2]}]}),
    _one("[NaN, 1]"),  # not JSON, but pydantic takes NaN
    _one("[100000000000000000000000, -1e-3]"),  # beyond 64 bits: orjson reads a float, pydantic an int
    _one("[100000000000000000000000, 1]", "UINT8"),
    _one("[1, 2]", "UINT8"),
    _one("[0.25, 2]", "FP16"),
    _one("[[0.5, 1]]"),
    _one("[0.5]"),
    _one('"0.5"'),
    _one("[1, 2]", shape="1"),
    _one("[1, 2]", datatype="INT7"),
    '{"inputs": []}',
    '{"id": 7, "inputs": [{"name": "input", "shape": [1, 1, 1, 2], "datatype": "FP32", "data": [1, 2]}]}',
    '{"inputs": [{"name": "input", "shape": [1, 1, 1, 2], "datatype": "FP32", "data": [1, 2]}], "parameters": {"p": [1]}}',
    '{"inputs": [{"name": "input", "shape": [1, 1, 1, 2], "datatype": "FP32"}]}',
    '{"inputs": [{"name": "input", "shape": [1, 1, 1, 2], "datatype": ["FP32"], "data": [1, 2]}]}',
    '[1, 2]',
    '{"inputs": [',
    '',
]


def _decoded(decode, text: str):
    """(the request without its numbers, the pixels), or the message of the 400."""
    try:
        request, pixels = decode(text.encode())
    except ServeError as exc:
        assert exc.status == 400
        return exc.message
    return request.model_dump(), pixels


def _slow(body: bytes):
    """The decoding before the fast path: pydantic's model of the whole text."""
    try:
        request = InferenceRequest.model_validate_json(body)
    except ValidationError as exc:
        raise ServeError(400, f"invalid inference request: {_first_errors(exc)}") from None
    return request, input_pixels(request, memoryview(b""), SHAPE)  # its conversion: test_json_values_are_numpys_conversion


@pytest.mark.parametrize("text", BODIES)
def test_json_requests_decode_as_pydantic_and_numpy_decoded_them(text):
    fast = _decoded(lambda body: decode_infer(body, None, None, 1 << 20, SHAPE), text)
    slow = _decoded(_slow, text)
    if isinstance(slow, str):
        assert fast == slow
    else:
        (fast_request, fast_pixels), (slow_request, slow_pixels) = fast, slow
        slow_request["inputs"][0]["data"] = None
        assert repr(fast_request) == repr(slow_request)
        assert fast_pixels.dtype == slow_pixels.dtype and np.array_equal(fast_pixels, slow_pixels, equal_nan=True)


@pytest.mark.parametrize("dtype", ["<f4", "<f2", "<u1"])
@pytest.mark.parametrize("data", [[0.1, 1 / 3, 2, 1e-40], [[0.25, 0.5], [1, 2]], [1e300], [[0.5, None]]])
def test_json_values_are_numpys_conversion(dtype, data):
    with np.errstate(over="ignore"):  # 1e300 into float32 is inf, with numpy's warning
        try:
            expected = np.asarray(data, dtype=np.dtype(dtype))
        except (ValueError, TypeError, OverflowError) as exc:
            with pytest.raises(type(exc)):
                json_values(data, np.dtype(dtype))
            return
        got = json_values(data, np.dtype(dtype))
    assert got.dtype == expected.dtype and np.array_equal(got, expected, equal_nan=expected.dtype.kind == "f")


@pytest.mark.parametrize("dtype", ["<f4", "<u1"])
@pytest.mark.parametrize("data, kind", [([0.5, True], "boolean"), (["1", 2.0], "string"), ([[0.5], [{}]], "object"),
                                        ([[0.5, False]], "boolean")])
def test_json_values_refuse_what_numpy_would_convert(dtype, data, kind):
    # numpy reads "1" as 1 and True as 1.0; a JSON tensor of another type than numbers is refused, as Triton does.
    with pytest.raises(NotANumber, match=f"a JSON {kind}"):
        json_values(data, np.dtype(dtype))
    assert json_values([0.5, 1.0], np.dtype(dtype), booleans_possible=False).tolist() == np.asarray([0.5, 1.0], dtype).tolist()


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("classes", [None, 2])
def test_answers_are_inference_responses(binary, classes):
    outputs = [{"name": "logits", "parameters": {"binary_data": binary, **({"classification": classes} if classes else {})}}]
    request = InferenceRequest.model_validate({"id": "r-2", "inputs": GOOD["inputs"], "outputs": outputs})
    logits = np.array([[0.25, -1.5, 3.0]], dtype=np.float32)
    content, headers = response_body(request, "m", 3, logits, ["a", "b", "c"])
    head = content[: int(headers["Inference-Header-Content-Length"])] if binary else content
    document = json.loads(head)
    # Every field written is one of the protocol's, and the document is a valid InferenceResponse.
    assert set(document) <= set(InferenceResponse.model_fields)
    assert all(set(o) <= set(ResponseOutput.model_fields) for o in document["outputs"])
    response = InferenceResponse.model_validate(document)
    assert (response.model_name, response.model_version, response.id) == ("m", "3", "r-2")
    output = response.outputs[0]
    if classes:
        assert output.datatype == "BYTES" and output.shape == [1, 2]
    else:
        assert output.datatype == "FP32" and output.shape == [1, 3]
        if not binary:
            assert output.data == logits.ravel().tolist()
    assert (output.parameters or {}).get("binary_data_size") == (len(content) - len(head) if binary else None)


@pytest.mark.parametrize("data", ["[0.5, 1e-3]", "[true, 0.5]", "[0.5, false]", "[[1.0], [true]]", "[0.5, null]", "[1, 2.5E+3]"])
@pytest.mark.parametrize("parameters", ['{}', '{"tag": "untrue"}', '{"tag": "falsely"}', '{"flag": true}', '{"u": "lll"}'])
def test_the_boolean_pre_scan_finds_the_words_wherever_they_are(data, parameters):
    """read_request's third value (may the JSON hold a boolean?) is the words' presence in the text, exactly."""
    body = f'{{"inputs": [{{"name": "input", "shape": [1, 1, 1, 2], "datatype": "FP32", "data": {data}}}], "parameters": {parameters}}}'.encode()
    _, _, possible = read_request(body, None, None, 1 << 20, (1, 1, 2))
    assert possible == (b"true" in body or b"false" in body)
