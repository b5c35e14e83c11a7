"""Request and response bodies of V2 ``infer``, JSON and binary tensor data extension.

Binary extension (Triton's): the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw tensors, in the
order of the inputs whose ``parameters.binary_data_size`` says how many bytes
they take (little-endian, row-major). Outputs come back the same way when the
request asks for ``binary_data`` (per output) or ``binary_data_output`` (for
all).

BYTES inputs (an image model's encoded image files): in the binary section each
element is a 4-byte little-endian length, then its bytes (Triton's form); in
JSON, whose strings cannot hold arbitrary bytes, each element is the file in
base64 (``decode_image_infer``).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
import zlib

import numpy as np
import orjson
import simdjson
from pydantic import ValidationError

from elunet.model_config import BYTES, TensorSignature
from elunet.serve.errors import ServeError, bad_request, body_too_large, shown
from elunet.serve.extensions import classify, serialize_bytes
from elunet.serve.images import images_pixels
from elunet.serve.interface import ImageInput, ModelInterface
from elunet.serve.protocol import (
    CLASSIFICATION_DATATYPE,
    INPUT_DATATYPES,
    OUTPUT_DATATYPE,
    RAW_DATATYPE,
    UINT8_SCALE,
    InferenceRequest,
    RequestInput,
)
from elunet.serve.settings import ALLOW_NON_FINITE
from elunet.serve.shared_memory import Lease, in_shared_memory

HEADER_LENGTH = "Inference-Header-Content-Length"
# Triton's timeout parameter is a uint64 of microseconds; beyond this (about 292,000 years) it means nothing.
MAX_TIMEOUT_US = 2**63 - 1


def decode_infer(
    body: bytes, header_length: str | None, content_encoding: str | None, max_bytes: int, model_input: TensorSignature,
    allow_non_finite: bool = ALLOW_NON_FINITE,
) -> tuple[InferenceRequest, np.ndarray]:
    """The whole decoding of an infer body for a model whose input is ``model_input``: the validated request and its
    input as float32 pixels, or None when the input is in a shared memory region (``shared_input_pixels`` then reads
    it, in the server's process)."""
    request, binary, booleans_possible = read_request(body, header_length, content_encoding, max_bytes, model_input)
    pixels = input_pixels(request, binary, model_input, allow_non_finite, booleans_possible)
    request.inputs[0].data = None  # now in ``pixels``; the request travels on without it (maybe between processes)
    return request, pixels


def decode_image_infer(
    body: bytes, header_length: str | None, content_encoding: str | None, max_bytes: int, image_files: TensorSignature, image: ImageInput,
    max_pixels: int,
) -> tuple[InferenceRequest, np.ndarray]:
    """decode_infer for an image model, whose input ``image_files`` carries encoded image files: the validated request
    and the files decoded to float32 pixels as ``image`` says (serve/images.py, as /v1 classify decodes them); 400
    saying what is wrong, and for which element."""
    request, binary, _ = read_request(body, header_length, content_encoding, max_bytes, image_files)
    tensor = request.inputs[0]
    count = check_image_input([i.name for i in request.inputs], tensor.datatype, tensor.shape, image_files)
    parameters = tensor.parameters or {}
    size = parameters.get("binary_data_size")
    what = f"input {image_files.name!r}"
    check_images_carried(parameters, what)
    if size is not None:
        if tensor.data is not None:
            raise bad_request(f"{what} has both 'data' and binary_data_size; send one")
        if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
            raise bad_request(f"{what} binary_data_size is {size!r}; the binary section after the JSON header has {len(binary)} bytes")
        elements = bytes_elements(binary, what)
    else:
        if binary:
            raise bad_request(f"body has {len(binary)} binary bytes, but no input declares binary_data_size")
        if tensor.data is None:
            raise bad_request(f"{what} has no 'data' and no binary_data_size parameter")
        elements = base64_elements(tensor.data, what)
    check_element_count(elements, count, tensor.shape, what)
    request.inputs[0].data = None  # decoded; the request travels on without it
    return request, encoded_images_pixels(elements, image_files, image, max_pixels)


def check_image_input(names: list[str], datatype: str, shape: list[int], image_files: TensorSignature) -> int:
    """400 unless the request's inputs are an image model's one input, ``image_files`` (BYTES, one file per batch element); the count."""
    name, dims = image_files.name, list(image_files.dims)
    if names != [name]:
        raise bad_request(f"expected exactly one input named {name!r} (encoded image files), received inputs {names}")
    if datatype != image_files.datatype:
        raise bad_request(f"input {name!r} has datatype {datatype}; this image model takes {image_files.datatype}, one encoded image file "
                          f"(PNG, JPEG, ...) per batch element; send pixels to the tensor model it serves")
    check_batch_shape(name, shape, dims, ": a batch of at least 1, one image file each")
    return shape[0]


def check_batch_shape(name: str, shape: list[int], dims: list[int], expected: str) -> None:
    """400 unless ``shape`` is a batch of at least one element of ``dims``; ``expected`` says what the batch holds."""
    if len(shape) != 1 + len(dims) or list(shape[1:]) != dims or shape[0] < 1:
        raise bad_request(f"input {name!r} has shape {shown(list(shape))}; expected {[-1, *dims]}{expected}")


def check_images_carried(parameters: dict, what: str) -> None:
    """400 for an image input placed in shared memory: elunet reads encoded images from the request only."""
    if in_shared_memory(parameters, False, what):
        raise bad_request(f"{what} is in a shared memory region; an image model takes its encoded images in the request only")


def check_element_count(elements: list[bytes], count: int, shape: list[int], what: str) -> None:
    if len(elements) != count:
        raise bad_request(f"{what} holds {len(elements)} {BYTES} elements; shape {list(shape)} needs {count}, one image file each")


def bytes_elements(raw, what: str) -> list[bytes]:
    """The elements of a BYTES tensor in Triton's binary form (serialize_bytes' inverse); 400 saying where it breaks."""
    raw = memoryview(raw)
    elements, at = [], 0
    while at < len(raw):
        if len(raw) - at < 4:
            raise bad_request(f"{what}: {BYTES} element {len(elements)} starts at byte {at} with {len(raw) - at} bytes left, fewer than "
                              "its 4-byte length; each element is a 4-byte little-endian length, then its bytes")
        length = int.from_bytes(raw[at:at + 4], "little")
        at += 4
        if length > len(raw) - at:
            raise bad_request(f"{what}: {BYTES} element {len(elements)} declares {length} bytes, but only {len(raw) - at} follow its length")
        elements.append(bytes(raw[at:at + length]))
        at += length
    return elements


def base64_elements(data: list, what: str) -> list[bytes]:
    """The elements of a BYTES tensor in JSON: a (nested) list of strings, each a file in base64; 400 naming the element that is not."""
    flat, open_lists = [], [iter(data)]
    while open_lists:  # in order, without recursion: the nesting is the client's
        item = next(open_lists[-1], _END)
        if item is _END:
            open_lists.pop()
        elif isinstance(item, list):
            open_lists.append(iter(item))
        else:
            flat.append(item)
    elements = []
    for index, text in enumerate(flat):
        if not isinstance(text, str):
            raise bad_request(f"{what}: {BYTES} element {index} is a JSON {_JSON_NAMES.get(type(text), type(text).__name__)}; in JSON each "
                              "element is a string holding an image file in base64 (JSON strings cannot carry the file's bytes)")
        try:
            elements.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise bad_request(f"{what}: {BYTES} element {index} is not base64 ({shown(text)}); in JSON each element is an image file in "
                              "base64, or send the files in the binary section (binary_data_size)") from None
    return elements


_END = object()


def encoded_images_pixels(elements: list[bytes], image_files: TensorSignature, image: ImageInput, max_pixels: int) -> np.ndarray:
    """The encoded image files of an image model's input as float32 pixels, as ``image`` says; each refusal names its element."""
    return images_pixels([(f"{image_files.name}[{i}]", data) for i, data in enumerate(elements)], image, max_pixels, refused_status=400)


def requested_timeout_us(parameters) -> float | None:
    """Triton's per-request ``timeout`` parameter (microseconds); None when absent or 0 (the server's timeout)."""
    wanted = (parameters or {}).get("timeout")
    if wanted is None:
        return None
    if not _is_number(wanted) or not 0 <= wanted <= MAX_TIMEOUT_US:
        raise bad_request(f"the timeout parameter must be a number of microseconds from 0 to {MAX_TIMEOUT_US}, got {shown(wanted)}")
    return float(wanted) or None


def bool_parameter(parameters, name: str, default: bool) -> bool:
    """A boolean request parameter, strictly: the string "false" is not a boolean, and is refused rather than taken as true."""
    value = (parameters or {}).get(name, default)
    if not isinstance(value, bool):
        raise bad_request(f"the {name} parameter must be a JSON boolean (true or false), got {value!r}")
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_request(
    body: bytes, header_length: str | None, content_encoding: str | None, max_bytes: int, model_input: TensorSignature
) -> tuple[InferenceRequest, memoryview, bool]:
    """Split and validate the body: the JSON header, the binary section after it, and whether the JSON
    may hold a true or false (JSON booleans are numbers to Python; only a text with those words can
    carry them, a fast test on the decompressed text).

    ``Inference-Header-Content-Length: 0`` is Triton's raw binary request: no header at all, the
    body is the model's one input, ``model_input``, in float32 (as many as the bytes hold); refused for an image model's
    input, whose elements need a shape.
    """
    body = _decompress(body, content_encoding, max_bytes)
    if header_length is None:
        json_part, binary = body, memoryview(b"")
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise bad_request(f"{HEADER_LENGTH} must be an integer, got {shown(header_length)}") from None
        if not 0 <= n <= len(body):
            raise bad_request(f"{HEADER_LENGTH} is {n}, but the body has only {len(body)} bytes")
        if n == 0:
            if model_input.datatype == BYTES:
                raise bad_request(f"a raw binary request ({HEADER_LENGTH}: 0) carries pixels; this image model takes {BYTES} image files: "
                                  "send a JSON header declaring its input and their binary_data_size")
            return _raw_request(body, model_input), memoryview(body), False
        json_part, binary = body[:n], memoryview(body)[n:]
    return parse_request(json_part), binary, _holds(json_part, b"true", b"u") or _holds(json_part, b"false", b"l")


def _holds(text: bytes, word: bytes, key: bytes) -> bool:
    """``word in text``, found through ``key``, one of its bytes that no JSON number holds.

    ``bytes.__contains__`` steps through the text a byte at a time, a visible share of the event loop's
    time for a body of a few thousand numbers; ``find`` of one byte is memchr, and the key then only turns
    up in the few keys of the document that hold it.
    """
    offset = word.index(key)
    at = text.find(key, offset)
    while at >= 0:
        if text.startswith(word, at - offset):
            return True
        at = text.find(key, at + 1)
    return False


def parse_request(text: bytes) -> InferenceRequest:
    """The validated JSON request; 400 saying what is wrong.

    A float tensor's numbers, nearly all of the text, skip pydantic: the document is parsed, pydantic
    validates it without the first input's ``data`` (which input_pixels checks, as numbers of the
    datatype), and the data is put back: as float64 numbers straight from simdjson where it holds
    numbers only (``_numbers_request``), else as orjson's list. Any other request, and anything
    orjson or that validation refuses, is validated by pydantic from the text, so errors and what is
    accepted stay pydantic's. (orjson reads integers beyond 64 bits as floats: into a float tensor
    they become the same pixels; integer tensors therefore take pydantic's way.)
    """
    try:
        if len(text) >= SIMD_MIN_BYTES and (request := _numbers_request(text)) is not None:
            return request
        document = orjson.loads(text)
        data = _take_data(document)
        if data is not None:
            request = InferenceRequest.model_validate_json(orjson.dumps(document))
            request.inputs[0].data = data
            return request
    except (orjson.JSONDecodeError, orjson.JSONEncodeError, ValidationError):
        pass
    try:
        return InferenceRequest.model_validate_json(text)
    except ValidationError as exc:
        raise bad_request(f"invalid inference request: {_first_errors(exc)}") from None


# A JSON body this large carries a tensor's numbers (a binary request's JSON header is a few hundred bytes).
SIMD_MIN_BYTES = 1024
UTF8_BOM = b"\xef\xbb\xbf"


def _numbers_request(text: bytes) -> InferenceRequest | None:
    """The request, its first input's data as float64 numbers read by simdjson without a Python float
    each, when that data is a flat array of numbers of a float tensor; None for anything else (the
    caller's way then decides, and says what is wrong).

    orjson's parse of the numbers and their packing into an array were two thirds of the event loop's
    decoding time of a 3072-number body; simdjson parses them straight into a buffer, to the same
    float64 values (both round correctly), and refuses what is not a number (booleans, strings, null,
    numbers beyond float64 or int64), which then takes the caller's way. So do nested arrays, a
    document with a key twice (where JSON parsers differ: orjson keeps the last), and one after a
    byte-order mark.
    """
    if text.startswith(UTF8_BOM) or text.find(b"\\") >= 0:
        return None  # simdjson skips a byte-order mark, which orjson and pydantic refuse; escapes: below
    try:
        document = simdjson.Parser().parse(text)
        if not isinstance(document, simdjson.Object) or not isinstance(inputs := document.get("inputs"), simdjson.Array) or not inputs:
            return None
        first = inputs[0]
        if not isinstance(first, simdjson.Object) or not isinstance(data := first.get("data"), simdjson.Array):
            return None
        if not _float_datatype(first.get("datatype")):
            return None
        values = np.frombuffer(data.as_buffer(of_type="d"), dtype="<f8")
        tensor = _plain(first, skip="data")
        rest = _plain(document, skip="inputs")
        if tensor is None or rest is None:
            return None
        rest["inputs"] = [tensor, *(_python(item) for item in inputs[1:])]
    except (ValueError, TypeError, RuntimeError):  # simdjson's errors: not JSON, not a number, too large, too deep
        return None
    validated = orjson.dumps(rest)
    # as_buffer flattens nested arrays, ragged ones too, where numpy (the other way) refuses a ragged list:
    # flat data holds the one "[" that the rest, written back (the same, as the text has no escapes), lacks.
    flat = validated.count(b"[") + 1
    if _occurrences(text, b"[", flat + 1) != flat:
        return None
    request = InferenceRequest.model_validate_json(validated)
    request.inputs[0].data = values
    return request


def _occurrences(text: bytes, byte: bytes, most: int) -> int:
    """How often ``byte`` is in ``text``, counting up to ``most``: by find (memchr), where count steps a byte at a time."""
    n, at = 0, text.find(byte)
    while at >= 0 and n < most:
        n, at = n + 1, text.find(byte, at + 1)
    return n


def _plain(obj, skip: str) -> dict | None:
    """A simdjson object as a dict, but for the value of ``skip``; None when a key comes twice."""
    keys = list(obj.keys())
    if len(set(keys)) != len(keys):
        return None
    return {key: _python(obj[key]) for key in keys if key != skip}


def _python(value):
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _take_data(document) -> list | None:
    """Remove and return the first input's ``data`` when it is a list of a float datatype's numbers, else None."""
    inputs = document.get("inputs") if isinstance(document, dict) else None
    first = inputs[0] if isinstance(inputs, list) and inputs else None
    if not isinstance(first, dict) or not isinstance(first.get("data"), list) or not _float_datatype(first.get("datatype")):
        return None
    return first.pop("data")


def _float_datatype(datatype) -> bool:
    """Whether ``datatype`` names one of the input datatypes whose elements are floats."""
    return isinstance(datatype, str) and datatype in INPUT_DATATYPES and np.dtype(INPUT_DATATYPES[datatype]).kind == "f"


def _raw_request(body: bytes, model_input: TensorSignature) -> InferenceRequest:
    image_bytes = math.prod(model_input.dims) * np.dtype(INPUT_DATATYPES[RAW_DATATYPE]).itemsize
    if not body or len(body) % image_bytes:
        raise bad_request(
            f"a raw binary request ({HEADER_LENGTH}: 0) must hold whole {RAW_DATATYPE} images of shape {list(model_input.dims)} "
            f"({image_bytes} bytes each); the body has {len(body)} bytes"
        )
    tensor = RequestInput(name=model_input.name, shape=[len(body) // image_bytes, *model_input.dims], datatype=RAW_DATATYPE,
                          parameters={"binary_data_size": len(body)})
    return InferenceRequest(inputs=[tensor])


def check_input(names: list[str], datatype: str, shape: list[int], model_input: TensorSignature) -> np.dtype:
    """400 unless the request's inputs are this model's one input, ``model_input``; the numpy dtype of its elements."""
    name, dims = model_input.name, list(model_input.dims)
    if names != [name]:
        raise bad_request(f"expected exactly one input named {name!r}, received inputs {names}")
    if datatype not in INPUT_DATATYPES:
        raise bad_request(f"input {name!r} has datatype {datatype}; expected one of {', '.join(INPUT_DATATYPES)}")
    check_batch_shape(name, shape, dims, " (batch of at least 1)")
    return input_dtype(datatype)


def input_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of an (accepted) input datatype's elements, as they travel: little-endian."""
    return np.dtype(INPUT_DATATYPES[datatype]).newbyteorder("<")


def shared_input_pixels(regions: Lease, name: str, parameters: dict, datatype: str, shape: list[int], allow_non_finite: bool) -> np.ndarray:
    """The pixels of input ``name`` (checked by check_input) that is in the shared memory region its parameters name."""
    values = regions.input_values(parameters, f"input {name!r}", input_dtype(datatype), shape)
    return as_pixels(values, name, shape, datatype, allow_non_finite)


def raw_values(raw, name: str, dtype: np.dtype, shape: list[int], datatype: str) -> np.ndarray:
    """The elements of input ``name`` sent as raw little-endian bytes; 400 when their number is wrong."""
    needed = math.prod(shape) * dtype.itemsize
    if len(raw) != needed:
        raise bad_request(f"input {name!r} has {len(raw)} bytes of raw data; shape {list(shape)} of {datatype} needs {needed}")
    return np.frombuffer(raw, dtype=dtype)


def as_pixels(values: np.ndarray, name: str, shape: list[int], datatype: str, allow_non_finite: bool = ALLOW_NON_FINITE) -> np.ndarray:
    """float32 pixels [n, *dims] in [0, 1] from the elements of input ``name``; with ``allow_non_finite``
    false, 400 for NaN or ±Inf (a JSON null, or a number too large for float32, arrives as one)."""
    pixels = values.reshape(shape).astype(np.float32)
    if datatype == "UINT8":
        pixels *= np.float32(UINT8_SCALE)
    elif not allow_non_finite and not np.isfinite(pixels).all():
        bad = np.flatnonzero(~np.isfinite(pixels))
        raise bad_request(
            f"input {name!r} has {bad.size} non-finite values (NaN, ±Inf, null, or beyond float32's range), the first at "
            f"flat index {bad[0]}: {float(values.ravel()[bad[0]])}; send finite numbers (this server runs with --allow-non-finite false)"
        )
    return pixels


def input_pixels(request: InferenceRequest, binary: memoryview, model_input: TensorSignature, allow_non_finite: bool = ALLOW_NON_FINITE,
                 booleans_possible: bool = True) -> np.ndarray | None:
    """The request's one input, ``model_input``, as float32 pixels [n, *dims] in [0, 1], None when it is in shared
    memory; 400 saying what is wrong.

    ``booleans_possible``: whether the JSON data may hold true or false (False only when the body has neither word)."""
    tensor = request.inputs[0]
    dtype = check_input([i.name for i in request.inputs], tensor.datatype, tensor.shape, model_input)
    name, shape = model_input.name, tensor.shape
    count = math.prod(shape)
    size = (tensor.parameters or {}).get("binary_data_size")
    if in_shared_memory(tensor.parameters or {}, tensor.data is not None or size is not None, f"input {name!r}"):
        return None
    if size is not None:
        if tensor.data is not None:
            raise bad_request(f"input {name!r} has both 'data' and binary_data_size; send one")
        if not isinstance(size, int) or isinstance(size, bool) or size != count * dtype.itemsize:
            raise bad_request(
                f"input {name!r} binary_data_size is {size!r}; shape {shape} of {tensor.datatype} needs {count * dtype.itemsize} bytes"
            )
        if len(binary) != size:
            raise bad_request(f"binary section has {len(binary)} bytes after the JSON header; binary_data_size says {size}")
        values = raw_values(binary, name, dtype, shape, tensor.datatype)
    else:
        if binary:
            raise bad_request(f"body has {len(binary)} binary bytes, but no input declares binary_data_size")
        if tensor.data is None:
            raise bad_request(f"input {name!r} has no 'data' and no binary_data_size parameter")
        try:
            values = json_values(tensor.data, dtype, booleans_possible)
        except (ValueError, TypeError, OverflowError) as exc:
            found = f" ({exc.args[0]})" if isinstance(exc, NotANumber) else ""
            raise bad_request(f"input {name!r} data must be a (nested) list of {tensor.datatype} numbers{found}") from None
        if values.size != count:
            raise bad_request(f"input {name!r} has {values.size} values; shape {shape} needs {count}")
    return as_pixels(values, name, shape, tensor.datatype, allow_non_finite)


class NotANumber(ValueError):
    """A JSON tensor holds something other than numbers (numpy would read "0.5" and true as numbers; Triton refuses them)."""


def json_values(data: list, dtype: np.dtype, booleans_possible: bool = True) -> np.ndarray:
    """The numbers of a JSON tensor as ``dtype``, numpy's conversion of the (nested) list; NotANumber for
    strings, booleans or objects in it.

    A flat list of numbers into a float dtype, nearly every request, goes through struct's packing into
    float64 first: the same values (one rounding, from the double), several times faster than numpy's
    conversion of Python floats. struct takes booleans as numbers too, so where the body may hold some,
    the list's types are looked at (a cost paid only then). Anything else is checked
    element by element, then gets numpy's conversion and errors.
    """
    if isinstance(data, np.ndarray):  # float64 numbers already (_numbers_request)
        return data.astype(dtype)
    if dtype.kind == "f":
        try:
            values = np.frombuffer(struct.pack(f"<{len(data)}d", *data), dtype="<f8").astype(dtype)
        except (struct.error, TypeError, OverflowError):
            pass
        else:
            if booleans_possible and bool in set(map(type, data)):
                raise NotANumber("found a JSON boolean")
            return values
    _only_numbers(data)
    return np.asarray(data, dtype=dtype)


# What orjson and pydantic make of JSON values that are not numbers, by name in errors. (null is NaN, as the
# server writes NaN: it is then a non-finite value, refused with --allow-non-finite false.)
_JSON_NAMES = {str: "string", bool: "boolean", dict: "object"}


def _only_numbers(data: list) -> None:
    """NotANumber unless the (nested) list holds numbers only."""
    lists = [data]
    while lists:
        current = lists.pop()
        kinds = set(map(type, current))
        if list in kinds:
            lists.extend(x for x in current if type(x) is list)
            kinds.discard(list)
        strange = kinds - {int, float, type(None)}
        if strange:
            raise NotANumber("found " + " and ".join(sorted(f"a JSON {_JSON_NAMES.get(k, k.__name__)}" for k in strange)))


def classification_count(value) -> int:
    """The ``classification`` parameter of a requested output: how many classes to answer per image."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise bad_request(f"the classification parameter must be a positive integer (classes per image), got {value!r}")
    return value


def requested_outputs(outputs: list[tuple[str, dict]], output_name: str, binary: bool) -> tuple[int | None, bool, dict | None]:
    """(classes per image or None, binary, the output's parameters when they put it in shared memory, else None)
    that a request's outputs ask for: ``outputs`` as (name, parameters); ``binary`` is the request's default (HTTP:
    its binary_data_output; gRPC answers raw always)."""
    names = [name for name, _ in outputs]
    if names and names != [output_name]:
        raise bad_request(f"requested outputs {names}; this model has one output, {output_name!r}")
    classes, shared = None, None
    for _, params in outputs:
        if "classification" in params:
            classes = classification_count(params["classification"])
        binary = bool_parameter(params, "binary_data", binary)
        if in_shared_memory(params, False, f"output {output_name!r}"):
            shared = params
    return classes, binary, shared


def output_tensor(logits: np.ndarray, classes: int | None, labels: tuple[str, ...]) -> tuple[str, list[int], np.ndarray]:
    """(datatype, shape, values) of the answer: the logits, or with ``classes`` Triton's classification strings
    (of each image's output elements, ranked all together as Triton ranks them)."""
    if classes is None:
        return OUTPUT_DATATYPE, list(logits.shape), np.ascontiguousarray(logits, dtype="<f4")
    values = classify(logits.reshape(len(logits), -1), classes, labels)
    return CLASSIFICATION_DATATYPE, list(values.shape), values


def tensor_bytes(datatype: str, values: np.ndarray) -> bytes:
    return serialize_bytes(values) if datatype == CLASSIFICATION_DATATYPE else values.tobytes()


def outputs_in_shared_memory(request: InferenceRequest) -> bool:
    """Whether a request's outputs are to be written into shared memory (response_body then needs the regions)."""
    return any(in_shared_memory(o.parameters or {}, False, f"output {o.name!r}") for o in request.outputs or [])


def response_body(
    request: InferenceRequest, model_name: str, model_version: int, logits: np.ndarray, interface: ModelInterface,
    encoding: str | None = None, regions: Lease | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The V2 response for ``logits``, the output ``interface`` describes: JSON, or JSON header + binary when the request asked for it,
    compressed with ``encoding`` (gzip or deflate) when given. An output in shared memory is written into
    ``regions`` (given when outputs_in_shared_memory) and answered without its data."""
    outputs = [(o.name, o.parameters or {}) for o in request.outputs or []]
    output_name = interface.output.name
    classes, binary, shared = requested_outputs(outputs, output_name, bool_parameter(request.parameters, "binary_data_output", False))
    datatype, shape, values = output_tensor(logits, classes, interface.labels)
    binary = binary and shared is None
    data = tensor_bytes(datatype, values) if binary or shared is not None else None
    # The fields of InferenceResponse, without None ones; the values are ours and of the wire types already,
    # so orjson writes them directly (a pydantic model costs more than the rest of the answer).
    output = {"name": output_name, "datatype": datatype, "shape": shape}
    if shared is not None:
        regions.write(shared, f"output {output_name!r}", data)
    elif binary:
        output["parameters"] = {"binary_data_size": len(data)}
    else:
        output["data"] = values.ravel().tolist()
    response = {"model_name": model_name, "model_version": str(model_version)}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = [output]
    head = orjson.dumps(response)
    if binary:
        content, headers = head + data, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    else:
        content, headers = head, {"Content-Type": "application/json"}
    if encoding:
        compressor = zlib.compressobj(6, zlib.DEFLATED, _WBITS[encoding])
        content = compressor.compress(content) + compressor.flush()
        headers["Content-Encoding"] = encoding
    return content, headers


def response_encoding(accept_encoding: str | None) -> str | None:
    """gzip or deflate, the one the client accepts (preferring gzip), or None: Triton's response compression."""
    accepted = {}
    for part in (accept_encoding or "").split(","):
        name, _, q = part.strip().partition(";")
        weight = q.strip().removeprefix("q=") if q else "1"
        try:
            accepted[name.strip().lower()] = float(weight)
        except ValueError:
            continue
    return next((e for e in _WBITS if accepted.get(e, accepted.get("*", 0)) > 0), None)


# zlib window bits: gzip wrapper, zlib wrapper (HTTP's "deflate").
_WBITS = {"gzip": 31, "deflate": 15}


def _decompress(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """Inflate a compressed body, refusing to grow it past the body-size limit (no zip bombs)."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in _WBITS:
        raise ServeError(415, f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none")
    inflater = zlib.decompressobj(_WBITS[encoding])
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise bad_request(f"body is not valid {encoding} data: {exc}") from None
    if len(data) > max_bytes:
        raise body_too_large(f"more than {max_bytes} bytes once inflated from {encoding}", max_bytes)
    return data


def _first_errors(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
