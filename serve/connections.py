"""HTTP connections with bounds against slow, silent, greedy and too many clients.

uvicorn's httptools protocol, plus what it lacks:

- a connection with no request under way is closed after the keep-alive
  timeout, whatever it sends meanwhile (uvicorn arms that timer only after a
  first response, and cancels it on any byte: a lone CRLF, which starts no
  request, kept a connection open for good);
- request headers must be complete within ``header_timeout_s`` of their
  first byte (uvicorn reset its timer on every byte, so headers dribbled a
  byte at a time held a connection forever) and within ``MAX_HEADER_BYTES``
  (a 60 MB header value was buffered whole): 408 or 431, then closed. While a
  response is still due on the connection (pipelining), the header timer
  waits for it, so that the 408 can never be read as that response;
- a client that stops reading its responses: once the write buffer has been
  full for ``write_timeout_s``, the connection is dropped;
- connections made while ``max_connections`` were already open are marked
  in each request's scope (``OVER_LIMIT_KEY``), for
  ``middleware.ConnectionLimit`` to refuse their requests (health probes
  excepted); connections made within the limit keep being served;
- a request the HTTP parser refuses gets the V2 error body (JSON), as every
  other error, where uvicorn answers text/plain;
- a response's status line and headers go out in one write with its body
  (``_OneWrite``): uvicorn writes them apart, two send() calls per answer,
  the costliest single line of the event loop's profile under load;
- a request that the app's ``fast_path`` takes (infer, where every
  middleware would pass it on untouched) is answered without ASGI once its
  body is whole: the app gets the body and a writer for its whole answer
  (``FastPath``). Any other request, or one whose body is still arriving,
  goes through the ASGI app.

The body's own time bound is ``middleware.BodyLimit``'s.
"""

from __future__ import annotations

import functools
from asyncio import AbstractEventLoop, TimerHandle, Transport
from typing import Any, Awaitable, Callable, Protocol

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from elunet.serve.errors import error_body

OVER_LIMIT_KEY = "elunet.connections_over_limit"
# Triton's HTTP front end and nginx allow 8-16 KiB of headers; this leaves room for large tokens.
MAX_HEADER_BYTES = 64 * 1024


Headers = list[tuple[bytes, bytes]]
Write = Callable[[int, Headers, bytes], Awaitable[None]]


class FastPath(Protocol):
    def route(self, scope: dict) -> Any:
        """What ``answer`` needs to know of a request it takes (its headers are complete), else None."""

    async def answer(self, scope: dict, body: bytes, route: Any, write: Write) -> None:
        """Answer the request (``body``: all of it) with one ``write(status, headers, body)``."""


class BoundedHttpProtocol(HttpToolsProtocol):
    # Set by bounded_protocol() from the server's settings.
    header_timeout_s: float
    write_timeout_s: float
    max_connections: int
    fast_path: FastPath | None = None

    _header_timer: TimerHandle | None = None
    _write_timer: TimerHandle | None = None
    _header_bytes: int | None = None  # while request headers are arriving
    _open_at_start = 0
    _idle_since = 0.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.transport = _OneWrite(transport, self.loop)
        self._open_at_start = len(self.connections)
        self._idle_since = self.loop.time()
        self._arm_idle()

    def on_response_complete(self) -> None:
        self._idle_since = self.loop.time()
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        if self._write_timer is not None:
            self._write_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # cancels the idle timer
        if self._header_bytes is not None:
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                return self._refuse(431, "Request Header Fields Too Large", f"request headers over {MAX_HEADER_BYTES} bytes")
        if not self.transport.is_closing() and not self._request_under_way() and self._header_timer is None:
            self._arm_idle()  # bytes that start no request (a CRLF) do not keep an idle connection open

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self._header_bytes = None
        self.scope[OVER_LIMIT_KEY] = self._open_at_start >= self.max_connections
        super().on_headers_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app) -> None:
        route = None
        if self.fast_path is not None and not cycle.waiting_for_100_continue:  # the ASGI receive() sends the 100
            route = self.fast_path.route(cycle.scope)
        if route is not None:
            # Run in uvicorn's exception wrapper (500 for an error, the task counted until shutdown), like any app.
            app = functools.partial(self._answer_directly, cycle, app, route)
        super()._start_asgi_task(cycle, app)

    async def _answer_directly(self, cycle: RequestResponseCycle, app, route, scope, receive, send) -> None:
        if cycle.more_body or cycle.disconnected:
            return await app(scope, receive, send)  # the ASGI app reads what is still arriving, within its limits
        body, cycle.body = bytes(cycle.body), bytearray()
        await self.fast_path.answer(scope, body, route, functools.partial(_write_whole, cycle))

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.write_timeout_s, self.transport.abort)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def send_400_response(self, msg: str) -> None:
        """A request the HTTP parser refused (uvicorn answers text/plain): the V2 error body, as every other error.
        When its chunked body is what broke, the request's app is running: it is told the client left, and the
        400 is its answer."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.disconnected = True  # the app's receive() now gets http.disconnect, its send() is dropped
            cycle.message_event.set()
            self.cycle = None
        self._refuse(400, "Bad Request", "invalid HTTP/1.1 request: its request line, a header or its chunked framing could not be parsed")

    def _request_under_way(self) -> bool:
        return self._header_bytes is not None or (self.cycle is not None and not self.cycle.response_complete)

    def _arm_idle(self) -> None:
        """Close the connection once it has been idle for the keep-alive timeout since its last response."""
        self._unset_keepalive_if_required()
        remaining = self._idle_since + self.timeout_keep_alive - self.loop.time()
        self.timeout_keep_alive_task = self.loop.call_later(max(remaining, 0.0), self.timeout_keep_alive_handler)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request's headers: its time starts when the response before it has gone.
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)
            return
        self._header_timer = None
        self._refuse(408, "Request Timeout", f"request headers not complete within {self.header_timeout_s:g} s (--header-timeout-s)")

    def _refuse(self, status: int, phrase: str, message: str) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # never inside another response
            body = error_body(message)
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n"
                % (status, phrase.encode(), len(body)) + body
            )
        self.transport.close()


def bounded_protocol(
    *, header_timeout_s: float, write_timeout_s: float, max_connections: int, fast_path: FastPath | None = None
) -> type[BoundedHttpProtocol]:
    """The protocol class for uvicorn's ``http`` setting, with these bounds (and the app's fast path)."""
    bounds = {"header_timeout_s": header_timeout_s, "write_timeout_s": write_timeout_s, "max_connections": max_connections, "fast_path": fast_path}
    return type("BoundedHttpProtocol", (BoundedHttpProtocol,), bounds)


async def _write_whole(cycle: RequestResponseCycle, status: int, headers: Headers, body: bytes) -> None:
    """What uvicorn's ``cycle.send`` does with a response's start and its one body message, as one write:
    ``headers`` must hold the Content-Length of ``body``; the server's own headers (date, server) come first."""
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    if cycle.disconnected:
        return
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    content, closes = [STATUS_LINE[status]], False
    for name, value in (*cycle.default_headers, *headers):
        if name == b"connection" and b"close" in [token.lower().strip() for token in value.split(b",")]:
            cycle.keep_alive, closes = False, True
        content += [name, b": ", value, b"\r\n"]
    if not cycle.keep_alive and not closes:
        content.append(b"connection: close\r\n")
    content += [b"\r\n", body]
    cycle.transport.write(b"".join(content))
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()


class _OneWrite:
    """A transport that holds a response's head (status line and headers, uvicorn's first write) until
    the next write, its body, and sends both as one.

    The head never waits longer than the current turn of the event loop (a streamed response's first
    chunk may come later), and goes out before the connection closes. Bytes keep their order: a held
    head is always written first.
    """

    def __init__(self, transport: Transport, loop: AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        elif data.startswith(b"HTTP/1.1 ") and data.endswith(b"\r\n\r\n") and not data.startswith(b"HTTP/1.1 100 "):
            self._head = data  # 100 Continue is a whole answer of its own: the client waits for it
            self._loop.call_soon(self._flush)
            return
        self._transport.write(data)

    def _flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)
