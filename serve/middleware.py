"""ASGI middleware that every request passes: access log, connection limit, body limits, API key.

Written as plain ASGI (not Starlette's BaseHTTPMiddleware) to stay cheap on
the hot path and to see the body as it streams in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time

from elunet.serve.connections import CONNECTIONS_KEY
from elunet.serve.errors import body_too_large
from elunet.serve.logs import ACCESS_LOGGER
from elunet.serve.protocol import DOCS_ASSETS, ENDPOINT_GROUPS

access_log = logging.getLogger(ACCESS_LOGGER)

HEALTH_PATHS = ENDPOINT_GROUPS["health"]


def open_paths(groups: list[str]) -> set[str]:
    """The paths that need no API key when these endpoint groups are open."""
    return {path for group in groups for path in ENDPOINT_GROUPS[group]}


async def send_error(send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class TrailingSlash:
    """``/v2/`` is ``/v2``: Triton answers paths with a trailing slash as without one, and so do clients' URLs."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/", "raw_path": scope.get("raw_path", b"").rstrip(b"/") or b"/"}
        return await self.app(scope, receive, send)


class AccessLog:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500
        sent = 0

        async def observing_send(message):
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            client = scope.get("client") or ("-", 0)
            access_log.info(
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "client": f"{client[0]}:{client[1]}",
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "bytes_sent": sent,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                },
            )


class BodyLimit:
    """Reads the whole request body before the app sees it: 413 beyond ``max_bytes``, 408 when it has not
    arrived within ``timeout_s``. The app then reads it from memory, and never waits on a slow client.

    A Content-Length above the limit is answered at once, before any of the body is read (the client may be
    waiting for it: ``Expect: 100-continue``, or a declared 10^12 bytes that never come). A client that is
    still sending meanwhile sees the 413 rather than a reset: the answer goes out whole first, then what
    keeps arriving is read and dropped for a while (up to a few times the limit), and only then is the
    connection closed.
    """

    DRAIN_FACTOR = 4
    DRAIN_IDLE_S = 1.0

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is None and b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
            return await self.app(scope, receive, send)  # no body (health probes, GETs)
        declared = int(length) if length is not None and length.isdigit() else None
        if declared is not None and declared > self.max_bytes:
            return await self._refuse(send, receive, f"{declared} bytes (Content-Length)", drain=declared <= self.DRAIN_FACTOR * self.max_bytes)
        chunks, received = [], 0
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                return await send_error(
                    send, 408, f"the request body did not arrive within {self.timeout_s:g} s ({received} bytes came; body_timeout_s)",
                    {"Connection": "close"},
                )
            if message["type"] != "http.request":
                return  # the client left
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            more = message.get("more_body", False)
            if received > self.max_bytes:
                return await self._refuse(send, receive, f"more than {self.max_bytes} bytes", drain=more)
            if not more:
                break
        body = b"".join(chunks)
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()  # http.disconnect, when the client leaves
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, send, receive, size: str, drain: bool) -> None:
        body = json.dumps({"error": body_too_large(size, self.max_bytes).message}).encode()
        head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": head})
        await send({"type": "http.response.body", "body": body, "more_body": True})  # whole, as Content-Length says
        dropped = 0
        while drain and dropped <= self.DRAIN_FACTOR * self.max_bytes:
            try:
                async with asyncio.timeout(self.DRAIN_IDLE_S):
                    message = await receive()
            except TimeoutError:
                break
            dropped += len(message.get("body", b""))
            drain = message["type"] == "http.request" and message.get("more_body", False)
        await send({"type": "http.response.body", "body": b""})  # the response ends; the connection closes


class ConnectionLimit:
    """503 for requests on connections beyond ``max_connections``; health probes are always answered."""

    def __init__(self, app, max_connections: int):
        self.app = app
        self.max_connections = max_connections

    async def __call__(self, scope, receive, send):
        open_now = scope.get(CONNECTIONS_KEY, 0)
        if scope["type"] == "http" and open_now > self.max_connections and scope["path"] not in HEALTH_PATHS:
            return await send_error(
                send, 503, f"{open_now} connections are open, the limit is {self.max_connections} (--max-connections): retry later, "
                "and reuse connections (keep-alive)", {"Retry-After": "1", "Connection": "close"},
            )
        return await self.app(scope, receive, send)


class ApiKey:
    """Optional bearer token: every path but those of the ``open_groups`` needs ``Authorization: Bearer <key>``."""

    def __init__(self, app, key: str, open_groups: list[str]):
        self.app = app
        self.expected = f"Bearer {key}".encode()
        self.open_paths = open_paths(open_groups)
        self.open_prefixes = (DOCS_ASSETS,) if "docs" in open_groups else ()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.open_paths or scope["path"].startswith(self.open_prefixes):
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not secrets.compare_digest(given, self.expected):
            reason = "missing" if not given else "wrong"
            return await send_error(
                send, 401, f"{reason} API key: send the header 'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"}
            )
        return await self.app(scope, receive, send)
