"""ASGI middleware that every request passes: access log, body-size limit, API key.

Written as plain ASGI (not Starlette's BaseHTTPMiddleware) to stay cheap on
the hot path and to see the body as it streams in.
"""

from __future__ import annotations

import json
import logging
import secrets
import time

from elunet.serve.logs import ACCESS_LOGGER

access_log = logging.getLogger(ACCESS_LOGGER)

# Probes and scrapers do not carry the API key; these paths stay open.
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready", "/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json")


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


class _TooLarge(Exception):
    pass


class BodyLimit:
    """413 for bodies over ``max_bytes``: from Content-Length at once, or while a chunked body streams in.

    Before answering, the rest of the body is read and discarded (up to a few
    times the limit) so that an ordinary client that is still sending sees the
    413 instead of a broken pipe.
    """

    DRAIN_FACTOR = 4

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(receive, send, 0)
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return msg

        async def tracking_send(msg):
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(receive, send, received)

    async def _refuse(self, receive, send, received: int) -> None:
        while received <= self.DRAIN_FACTOR * self.max_bytes:
            msg = await receive()
            received += len(msg.get("body", b""))
            if msg["type"] != "http.request" or not msg.get("more_body", False):
                break
        await send_error(send, 413, f"request body exceeds the limit of {self.max_bytes} bytes (max_body_bytes)")


class ApiKey:
    """Optional bearer token: every path but OPEN_PATHS needs ``Authorization: Bearer <key>``."""

    def __init__(self, app, key: str):
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not secrets.compare_digest(given, self.expected):
            reason = "missing" if not given else "wrong"
            return await send_error(
                send, 401, f"{reason} API key: send the header 'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"}
            )
        return await self.app(scope, receive, send)
