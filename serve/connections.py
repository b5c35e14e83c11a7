"""HTTP connections with bounds against slow, silent and too many clients.

uvicorn's httptools protocol, plus what it lacks:

- a connection that never sends a byte is closed after the keep-alive
  timeout (uvicorn arms that timer only after a first response);
- request headers must be complete within ``header_timeout_s`` of their
  first byte (uvicorn resets its timer on every byte, so headers dribbled a
  byte at a time held a connection forever): 408, then closed;
- each request's scope carries how many connections are open
  (``CONNECTIONS_KEY``), for ``middleware.ConnectionLimit`` to refuse work
  beyond the limit while health probes still pass.

The body's own time bound is ``middleware.BodyLimit``'s.
"""

from __future__ import annotations

from asyncio import TimerHandle

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

CONNECTIONS_KEY = "elunet.open_connections"


class BoundedHttpProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0
    _header_timer: TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self.scope[CONNECTIONS_KEY] = len(self.connections)
        super().on_headers_complete()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        body = f'{{"error": "request headers not complete within {self.header_timeout_s:g} s (header_timeout_s)"}}'.encode()
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            + b"content-length: %d\r\n\r\n" % len(body) + body
        )
        self.transport.close()


def bounded_protocol(header_timeout_s: float) -> type[BoundedHttpProtocol]:
    """The protocol class for uvicorn's ``http`` setting, with this header timeout."""
    return type("BoundedHttpProtocol", (BoundedHttpProtocol,), {"header_timeout_s": header_timeout_s})
