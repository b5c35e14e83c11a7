"""Request and response bodies of V2 ``infer``, JSON and binary tensor data extension.

Binary extension (Triton's): the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw tensors, in the
order of the inputs whose ``parameters.binary_data_size`` says how many bytes
they take (little-endian, row-major). Outputs come back the same way when the
request asks for ``binary_data`` (per output) or ``binary_data_output`` (for
all).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
from pydantic import ValidationError

from elunet.contracts import INPUT_NAME, OUTPUT_NAME
from elunet.serve.errors import ServeError, bad_request
from elunet.serve.protocol import INPUT_DATATYPES, OUTPUT_DATATYPE, UINT8_SCALE, InferenceRequest, InferenceResponse, ResponseOutput

HEADER_LENGTH = "Inference-Header-Content-Length"


def decode_infer(
    body: bytes, header_length: str | None, content_encoding: str | None, max_bytes: int, image_shape: tuple[int, int, int]
) -> tuple[InferenceRequest, np.ndarray]:
    """The whole decoding of an infer body: the validated request and its input as float32 pixels."""
    request, binary = read_request(body, header_length, content_encoding, max_bytes)
    pixels = input_pixels(request, binary, image_shape)
    request.inputs[0].data = None  # now in ``pixels``; the request travels on without it (maybe between processes)
    return request, pixels


def requested_timeout_us(request: InferenceRequest) -> float | None:
    """Triton's per-request ``timeout`` parameter (microseconds), when it is a positive number."""
    wanted = (request.parameters or {}).get("timeout")
    if isinstance(wanted, (int, float)) and not isinstance(wanted, bool) and wanted > 0:
        return float(wanted)
    return None


def read_request(
    body: bytes, header_length: str | None, content_encoding: str | None, max_bytes: int
) -> tuple[InferenceRequest, memoryview]:
    """Split and validate the body: the JSON header and the binary section after it."""
    body = _decompress(body, content_encoding, max_bytes)
    if header_length is None:
        json_part, binary = body, memoryview(b"")
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise bad_request(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 <= n <= len(body):
            raise bad_request(f"{HEADER_LENGTH} is {n}, but the body has only {len(body)} bytes")
        json_part, binary = body[:n], memoryview(body)[n:]
    try:
        request = InferenceRequest.model_validate_json(json_part)
    except ValidationError as exc:
        raise bad_request(f"invalid inference request: {_first_errors(exc)}") from None
    return request, binary


def input_pixels(request: InferenceRequest, binary: memoryview, image_shape: tuple[int, int, int]) -> np.ndarray:
    """The request's one input as float32 pixels [n, C, H, W] in [0, 1]; 400 saying what is wrong."""
    names = [i.name for i in request.inputs]
    if names != [INPUT_NAME]:
        raise bad_request(f"expected exactly one input named {INPUT_NAME!r}, received inputs {names}")
    tensor = request.inputs[0]
    if tensor.datatype not in INPUT_DATATYPES:
        raise bad_request(f"input {INPUT_NAME!r} has datatype {tensor.datatype}; expected one of {', '.join(INPUT_DATATYPES)}")
    expected = [-1, *image_shape]
    shape = tensor.shape
    if len(shape) != 4 or list(shape[1:]) != list(image_shape) or shape[0] < 1:
        raise bad_request(f"input {INPUT_NAME!r} has shape {shape}; expected {expected} (batch of at least 1)")
    dtype = np.dtype(INPUT_DATATYPES[tensor.datatype]).newbyteorder("<")
    count = math.prod(shape)
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if tensor.data is not None:
            raise bad_request(f"input {INPUT_NAME!r} has both 'data' and binary_data_size; send one")
        if not isinstance(size, int) or isinstance(size, bool) or size != count * dtype.itemsize:
            raise bad_request(
                f"input {INPUT_NAME!r} binary_data_size is {size!r}; shape {shape} of {tensor.datatype} needs {count * dtype.itemsize} bytes"
            )
        if len(binary) != size:
            raise bad_request(f"binary section has {len(binary)} bytes after the JSON header; binary_data_size says {size}")
        values = np.frombuffer(binary, dtype=dtype)
    else:
        if binary:
            raise bad_request(f"body has {len(binary)} binary bytes, but no input declares binary_data_size")
        if tensor.data is None:
            raise bad_request(f"input {INPUT_NAME!r} has no 'data' and no binary_data_size parameter")
        try:
            values = np.asarray(tensor.data, dtype=dtype)
        except (ValueError, TypeError, OverflowError):
            raise bad_request(f"input {INPUT_NAME!r} data must be a (nested) list of {tensor.datatype} numbers") from None
        if values.size != count:
            raise bad_request(f"input {INPUT_NAME!r} has {values.size} values; shape {shape} needs {count}")
    pixels = values.reshape(shape).astype(np.float32)
    if tensor.datatype == "UINT8":
        pixels *= np.float32(UINT8_SCALE)
    return pixels


def response_body(
    request: InferenceRequest, model_name: str, model_version: int, logits: np.ndarray
) -> tuple[bytes, dict[str, str]]:
    """The V2 response for ``logits``: JSON, or JSON header + binary when the request asked for it."""
    binary = bool((request.parameters or {}).get("binary_data_output", False))
    if request.outputs is not None:
        names = [o.name for o in request.outputs]
        if names and names != [OUTPUT_NAME]:
            raise bad_request(f"requested outputs {names}; this model has one output, {OUTPUT_NAME!r}")
        for output in request.outputs:
            params = output.parameters or {}
            if "classification" in params:
                raise bad_request("the classification extension is not supported; use POST /v1/models/{model}/classify for labels")
            binary = bool(params.get("binary_data", binary))
    logits = np.ascontiguousarray(logits, dtype="<f4")
    # model_construct: the values are ours and already of the wire types; validating them again costs time.
    output = ResponseOutput.model_construct(
        name=OUTPUT_NAME,
        datatype=OUTPUT_DATATYPE,
        shape=list(logits.shape),
        parameters={"binary_data_size": logits.nbytes} if binary else None,
        data=None if binary else logits.ravel().tolist(),
    )
    response = InferenceResponse.model_construct(model_name=model_name, model_version=str(model_version), id=request.id, outputs=[output])
    head = response.model_dump_json(exclude_none=True).encode()
    if not binary:
        return head, {"Content-Type": "application/json"}
    return head + logits.tobytes(), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


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
        raise ServeError(413, f"decompressed body exceeds the limit of {max_bytes} bytes", reason="too_large")
    return data


def _first_errors(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
