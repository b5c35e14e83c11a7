"""V2 infer over HTTP: the route under load, answered by an ASGI middleware in front of FastAPI's router.

Every other route is FastAPI's (serve/app.py); infer is only here, and the OpenAPI document describes it
from ``PATHS``. It sits innermost of the app's middlewares, so an infer request meets the
same trailing-slash rule, access log, CORS, API key and body limits as any other, then skips what an
endpoint behind FastAPI's router costs per request: its exception and exit-stack middlewares, the routes
tried one by one, dependency solving, Starlette's request and response objects. What that is worth:
benchmarks/serve_ab.py, with this middleware against a route.
"""

from __future__ import annotations

import logging
import math

from elunet.serve.decoding import INLINE_BYTES
from elunet.serve.errors import ServeError, error_body
from elunet.serve.operations import ClientGone, Operations, unless_disconnected
from elunet.serve.registry import ServedModel
from elunet.serve.shared_memory import Lease
from elunet.serve.tensors import (
    decode_image_infer,
    decode_infer,
    outputs_in_shared_memory,
    requested_timeout_us,
    response_body,
    response_encoding,
    shared_input_pixels,
)

log = logging.getLogger("elunet.serve")

PATHS = ("/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer")


class InferRoute:
    """POST /v2/models/{model}[/versions/{version}]/infer, answered with Operations.infer."""

    def __init__(self, app, ops: Operations):
        self.app = app
        self.ops = ops

    async def __call__(self, scope, receive, send) -> None:
        route = infer_route(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            return await self.app(scope, receive, send)
        if scope["method"] != "POST":
            return await _send(send, 405, error_body(f"{scope['method']} is not allowed on {scope['path']}: send POST"),
                               {"Content-Type": "application/json", "Allow": "POST"})
        body = await _body(receive)
        try:
            content, headers = await unless_disconnected(self._answer(*route, body, scope), disconnected(receive))
            status = 200
        except ClientGone:  # nobody reads it: 499, nginx's "client closed request", is for the access log
            status, content, headers = 499, b"", {}
        except ServeError as exc:
            status, content, headers = exc.status, error_body(exc.message), {"Content-Type": "application/json", **exc.headers}
        except Exception as exc:  # noqa: BLE001 - any other failure is a 500 that says its kind, as FastAPI's handler answers
            log.exception("unhandled error on POST %s", scope["path"])
            status, content, headers = 500, error_body(f"internal server error: {type(exc).__name__}"), {"Content-Type": "application/json"}
        await _send(send, status, content, headers)

    async def _answer(self, model: str, version: str | None, body: bytes, scope) -> tuple[bytes, dict[str, str]]:
        settings, decoder = self.ops.settings, self.ops.decoder
        header_length, content_encoding, accept_encoding = _headers(scope, b"inference-header-content-length", b"content-encoding",
                                                                    b"accept-encoding")
        encoding = response_encoding(accept_encoding)

        async def decode(served: ServedModel, regions: Lease):
            interface = served.interface
            if interface.image_files is not None:  # always off the loop, as /v1 classify: a few KB of file can hold 88 Mpx to decode
                parsed, pixels = await decoder.run(INLINE_BYTES, True, decode_image_infer, body, header_length, content_encoding, settings.max_body_bytes,
                                                   interface.image_files, interface.image, settings.max_image_pixels)
                return parsed, pixels, requested_timeout_us(parsed.parameters)
            # Only raw binary tensors decode without holding the interpreter lock (serve/decoding.py).
            holds_gil = header_length is None or bool(content_encoding)
            parsed, pixels = await decoder.run(
                len(body), holds_gil, decode_infer, body, header_length, content_encoding, settings.max_body_bytes, served.interface.input,
                settings.allow_non_finite,
            )
            if pixels is None:  # in shared memory, which only this process has mapped; a copy and a cast, off the loop
                tensor = parsed.inputs[0]
                pixels = await decoder.run(math.prod(tensor.shape) * 4, False, shared_input_pixels, regions, tensor.name, tensor.parameters,
                                           tensor.datatype, tensor.shape, settings.allow_non_finite)
            return parsed, pixels, requested_timeout_us(parsed.parameters)

        async def encode(served: ServedModel, regions: Lease, parsed, logits):
            if outputs_in_shared_memory(parsed):  # written here: only this process has the regions mapped
                return response_body(parsed, served.name, served.version, logits, served.interface, encoding, regions)
            size = logits.size * 8 + (len(body) if encoding else 0)
            return await decoder.run(size, True, response_body, parsed, served.name, served.version, logits, served.interface, encoding)

        return await self.ops.infer(model, version, decode, encode)


def infer_route(path: str) -> tuple[str, str | None] | None:
    """(model, version or None) when ``path`` is one of the infer routes, else None."""
    parts = path.split("/")
    if parts[-1] != "infer" or parts[1:3] != ["v2", "models"] or not parts[3:4] or not parts[3]:
        return None
    if len(parts) == 5:
        return parts[3], None
    if len(parts) == 7 and parts[4] == "versions" and parts[5]:
        return parts[3], parts[5]
    return None


async def _body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def disconnected(receive) -> None:
    """Returns when the client has gone (the body is read: what comes now is the disconnect, or nothing until the answer is sent)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send(send, status: int, content: bytes, headers: dict[str, str]) -> None:
    raw = [(b"content-length", str(len(content)).encode()), *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": content})


def _headers(scope, *names: bytes) -> list[str | None]:
    """The first value of each header named (ASGI's lower-case names), in one pass over the raw headers."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        found.setdefault(name, value)
    return [found[name].decode("latin-1") if name in found else None for name in names]

