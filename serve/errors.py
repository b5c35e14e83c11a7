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


def bad_request(message: str) -> ServeError:
    return ServeError(400, message)


def not_found(message: str) -> ServeError:
    return ServeError(404, message, reason="not_found")
