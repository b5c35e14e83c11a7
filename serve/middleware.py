"""ASGI middleware that every request passes: trailing slash, access log, API key, body limits.

Written as plain ASGI (not Starlette's BaseHTTPMiddleware) to stay cheap on
the hot path and to see the body as it streams in.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from elunet.serve.errors import body_too_large, error_body, shown
from elunet.serve.logs import access_line
from elunet.serve.operations import ApiKey
from elunet.serve.protocol import DOCS_ASSETS, ENDPOINT_GROUPS



def open_paths(groups: list[str]) -> set[str]:
    """The paths that need no API key when these endpoint groups are open."""
    return {path for group in groups for path in ENDPOINT_GROUPS[group]}


async def send_error(send, status: int, message: str, headers: dict[str, str] | None = None, *, more_body: bool = False) -> None:
    """Answer ``{"error": message}``; with ``more_body`` the response stays open (it is whole, as its Content-Length says)."""
    body = error_body(message)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": more_body})


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
    """One structured line per HTTP request; ``on_cancel()`` for a request cut off unanswered (a shutdown past its grace period)."""

    def __init__(self, app, on_cancel: Callable[[], None]):
        self.app = app
        self.on_cancel = on_cancel

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
        except asyncio.CancelledError:
            self.on_cancel()
            raise
        finally:
            client = scope.get("client") or ("-", 0)
            access_line(scope["method"], scope["path"], status, f"{client[0]}:{client[1]}", sent, round((time.perf_counter() - start) * 1000, 3))


class BodyLimit:
    """Reads the whole request body before the app sees it: 413 beyond ``max_bytes``, 408 when it has not
    arrived within ``timeout_s``, 503 when the server starts shutting down meanwhile (a slow upload must not
    hold the shutdown until its grace period runs out). The app then reads the body from memory, and never
    waits on a slow client.

    A Content-Length above the limit is answered at once, before any of the body is read (the client may be
    waiting for it: ``Expect: 100-continue``, or a declared 10^12 bytes that never come). A client that is
    still sending meanwhile sees the 413 rather than a reset: the answer goes out whole first, then what
    keeps arriving is read and dropped for a while (up to a few times the limit, for DRAIN_S at most), and
    only then is the connection closed.
    """

    DRAIN_FACTOR = 4
    DRAIN_S = 3.0
    DRAIN_IDLE_S = 1.0
    # How often a body read looks whether the server is shutting down.
    DRAINING_CHECK_S = 0.25

    def __init__(self, app, max_bytes: int, timeout_s: float, draining: Callable[[], bool]):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.draining = draining

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length, coding = _framing(scope)
        if length is None and coding is None:
            return await self.app(scope, receive, send)
        if coding is not None and [c.strip() for c in coding.lower().split(b",")] != [b"chunked"]:
            # The HTTP parser undoes the chunked framing only: a body in "gzip, chunked" would reach the app
            # still compressed. RFC 9112 asks 501 for a transfer coding the server does not implement.
            message = (f"Transfer-Encoding {shown(coding.decode('latin-1'), 80)} is not implemented: send the body as it is, with a "
                       "Content-Length or 'Transfer-Encoding: chunked'")
            return await self._refuse(send, receive, 501, message, drain=True)
        declared = int(length) if length is not None else 0  # the HTTP parser has checked it is a number
        if declared > self.max_bytes:
            too_large = body_too_large(f"{declared} bytes (Content-Length)", self.max_bytes).message
            return await self._refuse(send, receive, 413, too_large, drain=declared <= self.DRAIN_FACTOR * self.max_bytes)
        chunks, received = [], 0
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while True:
            message = await self._receive(receive, deadline)
            if message is None:
                if self.draining():
                    return await send_error(send, 503, "the server is shutting down; send the request again", {"Retry-After": "1", "Connection": "close"})
                return await send_error(
                    send, 408, f"the request body did not arrive within {self.timeout_s:g} s ({received} bytes came; --body-timeout-s)",
                    {"Connection": "close"},
                )
            if message["type"] != "http.request":
                return  # the client left
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            more = message.get("more_body", False)
            if received > self.max_bytes:
                return await self._refuse(send, receive, 413, body_too_large(f"more than {self.max_bytes} bytes", self.max_bytes).message, drain=more)
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

    async def _receive(self, receive, deadline: float):
        """The next message, or None past ``deadline`` or once the server is shutting down."""
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            try:
                async with asyncio.timeout_at(min(deadline, loop.time() + self.DRAINING_CHECK_S)):
                    return await receive()
            except TimeoutError:
                if self.draining():  # only a body that stalls is cut off: one that keeps coming is read and answered
                    return None
        return None

    async def _refuse(self, send, receive, status: int, message: str, drain: bool) -> None:
        await send_error(send, status, message, {"Connection": "close"}, more_body=True)
        dropped = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.DRAIN_S
        while drain and dropped <= self.DRAIN_FACTOR * self.max_bytes:
            message = await self._receive(receive, min(deadline, loop.time() + self.DRAIN_IDLE_S))
            if message is None:
                break
            dropped += len(message.get("body", b""))
            drain = message["type"] == "http.request" and message.get("more_body", False)
        await send({"type": "http.response.body", "body": b""})  # ends the response, and so the connection


class ApiKeyCheck:
    """Optional bearer token: every path but those of the ``open_groups`` needs ``Authorization: Bearer <key>``."""

    def __init__(self, app, key: ApiKey, open_groups: list[str]):
        self.app = app
        self.key = key
        self.open_paths = open_paths(open_groups)
        self.open_prefixes = (DOCS_ASSETS,) if "docs" in open_groups else ()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.open_paths or scope["path"].startswith(self.open_prefixes):
            return await self.app(scope, receive, send)
        refusal = self.key.refusal(_authorization(scope), "the header 'Authorization")
        if refusal is not None:
            return await send_error(send, refusal.status, refusal.message, refusal.headers)
        return await self.app(scope, receive, send)


def _authorization(scope) -> bytes:
    return dict(scope["headers"]).get(b"authorization", b"")


def _framing(scope) -> tuple[bytes | None, bytes | None]:
    """(Content-Length, Transfer-Encoding: every one, in order, joined) of a request, each None when absent."""
    length, codings = None, []
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            # Every one, in order: the parser takes "gzip" then "chunked" as two headers too.
            codings.append(value)
    return length, b", ".join(codings) or None
