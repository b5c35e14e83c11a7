"""Infer requests answered around ASGI (serve/connections.py, app._FastInfer) answer as through it.

The fast path takes an infer request only where every middleware would hand it on untouched; the
same request with a chunked body goes through the whole ASGI stack (BodyLimit reads it), so the two
framings of one request compare the two ways byte for byte, on raw sockets, against a real server.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from fixtures_serve import FAULTY, LINEAR, SYNTHETIC_SHAPE, binary_infer_body

from elunet.contracts import INPUT_NAME
from elunet.serve.app import create_app
from elunet.serve.connections import OVER_LIMIT_KEY
from elunet.serve.settings import ServeSettings

pytestmark = pytest.mark.slow

PIXELS = np.random.default_rng(3).random((2, *SYNTHETIC_SHAPE), dtype=np.float32)


def _json(x: np.ndarray, **extra) -> bytes:
    return json.dumps({"inputs": [{"name": INPUT_NAME, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}], **extra}).encode()


def _request(path: str, body: bytes, headers: dict[str, str], chunked: bool, version: str = "1.1") -> bytes:
    head = [f"POST {path} HTTP/{version}", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    if chunked:
        head.append("Transfer-Encoding: chunked")
        half = len(body) // 2
        framed = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]) if part) + b"0\r\n\r\n"
    else:
        head.append(f"Content-Length: {len(body)}")
        framed = body
    return ("\r\n".join(head) + "\r\n\r\n").encode() + framed


def _responses(port: int, data: bytes, count: int) -> tuple[list[tuple[str, list[tuple[str, str]], bytes]], bool]:
    """``count`` responses read off one connection that sent ``data``; and whether the server then closed it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        buffer, answers = b"", []
        while len(answers) < count:
            while b"\r\n\r\n" not in buffer:
                buffer += _recv(s)
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            status, *lines = head.decode("latin-1").split("\r\n")
            headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines]
            length = int(next(v for k, v in headers if k.lower() == "content-length"))
            while len(buffer) < length:
                buffer += _recv(s)
            answers.append((status, [h for h in headers if h[0].lower() != "date"], buffer[:length]))
            buffer = buffer[length:]
        s.settimeout(2)
        try:
            closed = s.recv(1) == b""
        except TimeoutError:
            closed = False
    return answers, closed


def _recv(s: socket.socket) -> bytes:
    chunk = s.recv(65536)
    assert chunk, "the server closed the connection before its answer was whole"
    return chunk


CASES = {
    "json": (f"/v2/models/{LINEAR}/infer", _json(PIXELS, id="req-7"), {"Content-Type": "application/json"}),
    "binary": (f"/v2/models/{LINEAR}/versions/1/infer", *binary_infer_body(PIXELS)),
    "gzip answer": (f"/v2/models/{LINEAR}/infer", _json(PIXELS), {"Accept-Encoding": "gzip"}),
    "wrong shape": (f"/v2/models/{LINEAR}/infer", _json(PIXELS.reshape(2, -1)), {}),
    "not json": (f"/v2/models/{LINEAR}/infer", b"{not json", {}),
    "unknown model": ("/v2/models/no-such-model/infer", _json(PIXELS), {}),
    "unknown version": (f"/v2/models/{LINEAR}/versions/9/infer", _json(PIXELS), {}),
    "engine fails": (f"/v2/models/{FAULTY}/infer", _json(PIXELS), {}),
}


@pytest.mark.parametrize("case", CASES)
def test_an_infer_request_answers_the_same_around_asgi_as_through_it(synthetic_server, case):
    path, body, headers = CASES[case]
    (fast,), _ = _responses(synthetic_server.port, _request(path, body, headers, chunked=False), 1)
    (through_asgi,), _ = _responses(synthetic_server.port, _request(path, body, headers, chunked=True), 1)
    assert fast == through_asgi
    assert fast[0].startswith("HTTP/1.1 ") and ("gzip" not in case or ("content-encoding", "gzip") in [(k.lower(), v) for k, v in fast[1]])


def test_pipelined_infer_requests_are_answered_in_order_and_http_1_0_is_closed_after_its_answer(synthetic_server):
    port = synthetic_server.port
    first, second = (f"/v2/models/{LINEAR}/infer", _json(PIXELS[:1], id="first"), {}), (f"/v2/models/{LINEAR}/infer", _json(PIXELS, id="second"), {})
    answers, closed = _responses(port, _request(*first, chunked=False) + _request(*second, chunked=False), 2)
    assert [json.loads(body)["id"] for _, _, body in answers] == ["first", "second"] and not closed
    assert [json.loads(body)["outputs"][0]["shape"][0] for _, _, body in answers] == [1, 2]
    (answer,), closed = _responses(port, _request(*first, chunked=False, version="1.0"), 1)
    assert answer[0].startswith("HTTP/1.1 200") and ("connection", "close") in [(k.lower(), v) for k, v in answer[1]] and closed


def test_the_access_log_has_the_same_line_either_way(synthetic_server):
    path, body, headers = CASES["wrong shape"]
    _responses(synthetic_server.port, _request(path, body, headers, chunked=False), 1)
    _responses(synthetic_server.port, _request(path, body, headers, chunked=True), 1)
    lines = [json.loads(line) for line in synthetic_server.log().splitlines() if line.startswith("{")]
    access = [entry for entry in lines if entry["logger"] == "elunet.serve.access" and entry["path"] == path][-2:]
    varying = {"ts", "client", "duration_ms"}
    assert len(access) == 2 and [{k: v for k, v in e.items() if k not in varying} for e in access] == [
        {"level": "info", "logger": "elunet.serve.access", "msg": f"POST {path} 400", "method": "POST", "path": path, "status": 400,
         "bytes_sent": access[0]["bytes_sent"]}] * 2


def _scope(path: str = f"/v2/models/{LINEAR}/infer", method: str = "POST", **headers) -> dict:
    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in {"content_length": "10", **headers}.items() if v is not None]
    return {"type": "http", "method": method, "path": path, "headers": raw}


@pytest.mark.parametrize(
    "scope, taken",
    [
        (_scope(), (LINEAR, None)),
        (_scope(f"/v2/models/{LINEAR}/versions/2/infer"), (LINEAR, "2")),
        (_scope(method="GET"), None),
        (_scope(f"/v2/models/{LINEAR}/infer/"), None),  # TrailingSlash rewrites it
        (_scope(f"/v2/models/{LINEAR}"), None),
        (_scope(content_length=None, transfer_encoding="chunked"), None),  # BodyLimit reads it
        (_scope(content_length=str(1 << 20)), (LINEAR, None)),
        (_scope(content_length=str((1 << 20) + 1)), None),  # BodyLimit answers 413
        ({**_scope(), OVER_LIMIT_KEY: True}, None),  # ConnectionLimit answers 503
        (_scope(authorization="Bearer k"), (LINEAR, None)),
        (_scope(origin="http://x"), (LINEAR, None)),
    ],
)
def test_the_fast_path_takes_only_what_every_middleware_hands_on_untouched(synthetic_repository, scope, taken):
    app = create_app(ServeSettings(repository=synthetic_repository, max_body_bytes=1 << 20))
    assert app.fast_path.route(scope) == taken


def test_with_an_api_key_or_cors_the_fast_path_takes_what_those_middlewares_pass(synthetic_repository):
    keyed = create_app(ServeSettings(repository=synthetic_repository, api_key="k"))
    assert keyed.fast_path.route(_scope(authorization="Bearer k")) == (LINEAR, None)
    assert keyed.fast_path.route(_scope(authorization="Bearer wrong")) is None  # ApiKey answers 401
    assert keyed.fast_path.route(_scope()) is None
    cors = create_app(ServeSettings(repository=synthetic_repository, cors_allow_origins=["http://x"]))
    assert cors.fast_path is None  # Starlette's CORS adds Vary: Origin to every answer, even without an Origin


def test_uvicorn_still_starts_each_request_where_the_fast_path_hooks_in():
    """The fast path overrides uvicorn's _start_asgi_task; were it renamed, requests would silently all take ASGI."""
    import inspect

    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert "self._start_asgi_task(" in inspect.getsource(HttpToolsProtocol.on_headers_complete)
    assert "self._start_asgi_task(" in inspect.getsource(HttpToolsProtocol.on_response_complete)  # pipelined requests
