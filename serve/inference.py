"""The path every inference request takes, whichever front end received it (HTTP or gRPC).

The front end reads its wire format; this core checks the version can take
the request, has the body decoded (``decode``), queues the pixels for a batch
on one of the version's instances, has the logits encoded (``encode``), and
counts every step in the version's metrics and statistics, failures included.
So both front ends share instances, batcher, errors, timeouts and counts.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, TypeVar

import numpy as np

from elunet.serve.errors import ServeError, bad_request
from elunet.serve.registry import ServedModel

R = TypeVar("R")
T = TypeVar("T")


async def infer(
    served: ServedModel,
    decode: Callable[[], Awaitable[tuple[R, np.ndarray, float | None]]],
    encode: Callable[[R, np.ndarray], Awaitable[T]],
    server_timeout_s: float,
    allow_non_finite: bool,
) -> T:
    """``decode()`` -> (request, pixels, requested timeout in µs or None); ``encode(request, logits)`` -> the answer.

    ``allow_non_finite`` decides the output as the input: a server that computes on NaN input answers the
    NaN logits it gives (as Triton does, JSON null), and one that refuses non-finite input also refuses
    non-finite logits from finite pixels far outside [0, 1] (e.g. 3e38 overflows the network), which would
    otherwise be answered as nulls or "inf" labels, silently wrong."""
    started = time.perf_counter()
    try:
        served.check_ready()
        request, pixels, timeout_us = await decode()
        decoded = time.perf_counter()
        served.metrics.decoded(decoded - started)
        logits = await served.predict(pixels, served.timeout(timeout_us, server_timeout_s))
        computed = time.perf_counter()
        if not allow_non_finite and not np.isfinite(logits).all():
            raise bad_request(
                "the model's output is not finite for this input (pixels far outside the model's [0, 1] range overflow it: "
                f"these lie in [{float(pixels.min()):g}, {float(pixels.max()):g}]); send pixels in [0, 1]"
            )
        answer = await encode(request, logits)
        served.metrics.encoded(time.perf_counter() - computed)
    except ServeError as exc:
        served.metrics.failed(exc.reason, time.perf_counter() - started)
        raise
    except asyncio.CancelledError:  # the client left (or a shutdown ran out of time): its queued images are not computed
        served.metrics.failed("cancelled", time.perf_counter() - started)
        raise
    served.metrics.succeeded(len(pixels), time.perf_counter() - started)
    return answer
