"""The error a request fails with: an HTTP status, a message, and a reason for the metrics."""

from __future__ import annotations


class ServeError(Exception):
    """Answered as ``{"error": message}`` with ``status`` (and ``headers``)."""

    def __init__(self, status: int, message: str, *, reason: str = "invalid_request", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        # Label of elunet_inference_request_failure_total{reason=...}.
        self.reason = reason
        self.headers = headers or {}

    def __reduce__(self):
        # Raised in a decoding process, it must arrive whole in the server process.
        return _rebuild, (self.status, self.message, self.reason, self.headers)


def _rebuild(status: int, message: str, reason: str, headers: dict[str, str]) -> ServeError:
    return ServeError(status, message, reason=reason, headers=headers)


def bad_request(message: str) -> ServeError:
    return ServeError(400, message)


def not_found(message: str) -> ServeError:
    return ServeError(404, message, reason="not_found")
