"""The error a request fails with: an HTTP status, a message, and a reason for the metrics."""

from __future__ import annotations

import json


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


def body_too_large(size: str, limit: int) -> ServeError:
    """413 for a request body of ``size`` (words: "2000000 bytes", "more than ..."), with the fixes."""
    return ServeError(
        413,
        f"the request body has {size}; the limit is {limit} bytes (the server's --max-body-bytes). Send fewer images per "
        "request, or their pixels as binary tensors (Triton's binary tensor extension: 4 bytes per FP32 value, ~3x less than JSON)",
        reason="too_large",
    )


def error_body(message: str) -> bytes:
    """The V2 protocol's error body, ``{"error": message}``."""
    return json.dumps({"error": message}).encode()


def shown(value, limit: int = 40) -> str:
    """A client's value quoted in an error, cut short: an error should not echo 5000 digits back."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"
