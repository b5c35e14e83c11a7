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

from elunet.model_config import TensorSignature
from elunet.serve.errors import ServeError
from elunet.serve.interface import ModelInterface
from elunet.serve import tensors
from elunet.serve.protocol import InferenceRequest, InferenceResponse, ResponseOutput
from elunet.serve.tensors import NotANumber, _first_errors, decode_infer, input_pixels, json_values, read_request, response_body

MODEL_INPUT = TensorSignature("input", "FP32", (1, 1, 2))
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
    # Where simdjson (_numbers_request) steps aside, for the way before it:
    _one("[0.5, true]"),
    _one('[0.5, "1"]'),
    _one("[0.5, null]"),
    _one("[1e400, 1]"),
    _one("[18446744073709551615, -9223372036854775808]"),
    _one("[0.5, 1]")[:-1] + ', "id": "a", "id": "b"}',
    '{"inputs": [{"name": "input", "shape": [1, 1, 1, 2], "datatype": "FP32", "data": [9, 9], "data": [0.5, 1]}]}',
    '{"inputs": [{"name": "input", "shape": [1, 1, 1, 2], "datatype": "FP32", "data": [0.5, 1]}], "inputs": []}',
    '{"inputs": [{"name": "input", "shape": [1, 1, 1, 2], "datatype": 7, "data": [0.5, 1]}]}',
    '{"inputs": {"name": "input"}}',
    '{"inputs": [[0.5, 1]]}',
    _one("[2.2250738585072014e-308, 4.9e-324]", "FP64"),
    _one("[-0.0, 9007199254740993]"),
    _one("[[[0.5]], [1]]"),  # ragged: numpy refuses it, simdjson's as_buffer would flatten it
    _one("[[0.5], []]", shape=(1, 1, 1, 1)),
    _one("[[0.5, 1]]")[:-1] + ', "id": "[\\u005b"}',  # a "[" in a string, and one escaped
    "\ufeff" + _one("[0.5, 1]"),  # a byte-order mark: simdjson skips it, orjson and pydantic refuse it
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
    return request, input_pixels(request, memoryview(b""), MODEL_INPUT)  # its conversion: test_json_values_are_numpys_conversion


@pytest.mark.parametrize("simd_min_bytes", [0, 1 << 30], ids=["simdjson tried", "orjson only"])
@pytest.mark.parametrize("text", BODIES)
def test_json_requests_decode_as_pydantic_and_numpy_decoded_them(text, simd_min_bytes, monkeypatch):
    monkeypatch.setattr(tensors, "SIMD_MIN_BYTES", simd_min_bytes)
    fast = _decoded(lambda body: decode_infer(body, None, None, 1 << 20, MODEL_INPUT), text)
    slow = _decoded(_slow, text)
    if isinstance(slow, str):
        assert fast == slow
    else:
        (fast_request, fast_pixels), (slow_request, slow_pixels) = fast, slow
        slow_request["inputs"][0]["data"] = None
        assert repr(fast_request) == repr(slow_request)
        assert fast_pixels.dtype == slow_pixels.dtype and np.array_equal(fast_pixels, slow_pixels, equal_nan=True)


def test_simdjson_reads_flat_float_tensors_and_steps_aside_for_anything_else():
    taken = [json.dumps(GOOD), _one("[1, 2]", "FP16"), _one("[-0.0, 9007199254740993]"), _one("[]")]
    assert all(isinstance(tensors._numbers_request(t.encode()).inputs[0].data, np.ndarray) for t in taken)
    left = [_one("[0.5, true]"), _one("[[0.5, 1]]"), _one("[[[0.5]], [1]]"), _one("[1, 2]", "UINT8"), _one("[1e400, 1]"), BODIES[-11], BODIES[-10], BODIES[-9], BODIES[-1],
            '{"inputs": [{"name": "input", "shape": [1, 1, 1, 2], "datatype": "FP32"}]}', "{", "[1]"]
    assert [tensors._numbers_request(t.encode()) for t in left] == [None] * len(left)


def test_simdjson_and_orjson_read_the_same_float64_numbers():
    rng = np.random.default_rng(5)
    numbers = [repr(float(x)) for x in rng.random(300)] + [f"{x:.{d}g}" for x, d in zip(rng.normal(0, 1e6, 300), rng.integers(1, 25, 300))]
    numbers += [f"{x}e{e}" for x, e in zip(rng.random(300), rng.integers(-320, 308, 300))] + [str(i) for i in rng.integers(-(2**62), 2**62, 100)]
    numbers += ["0", "-0", "1E5", "1e+5", "2.2250738585072014e-308", "4.9e-324", "1.7976931348623157e308", "18446744073709551615"]
    text = ("[" + ",".join(numbers) + "]").encode()
    by_simdjson = np.frombuffer(tensors.simdjson.Parser().parse(text).as_buffer(of_type="d"), "<f8")
    by_orjson = np.asarray([float(x) for x in tensors.orjson.loads(text)], "<f8")
    assert np.array_equal(by_simdjson.view("<u8"), by_orjson.view("<u8"))  # bit for bit, signed zeros included


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
    content, headers = response_body(request, "m", 3, logits, ModelInterface(MODEL_INPUT, TensorSignature("logits", "FP32", (3,)), ("a", "b", "c"), None))
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
    _, _, possible = read_request(body, None, None, 1 << 20, MODEL_INPUT)
    assert possible == (b"true" in body or b"false" in body)
