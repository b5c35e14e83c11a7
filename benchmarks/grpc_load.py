"""Closed-loop gRPC load on Triton's ModelInfer, from a separate process, for the serving benchmarks.

There is no gRPC counterpart of wrk here (ghz is a Go binary, not packaged for Debian), so a bounded
client stands in: one process, one channel, ``concurrency`` asyncio tasks each sending the same
pre-serialized ModelInferRequest and waiting for its answer. The request is serialized once and the
answers are not parsed (except the first, checked by the caller), which keeps the client's own cost
per call small, but it is Python: on a small machine it takes CPU from the server, which the figures
include.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
from wrk_load import WrkResult

from elunet.contracts import INPUT_NAME, OUTPUT_NAME

METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class GrpcResult(WrkResult):
    """wrk's figures, for gRPC, and the first answer (to check it against the engine's)."""

    first_answer: bytes = b""


def infer_request(model: str, pixels: np.ndarray) -> bytes:
    """A serialized ModelInferRequest carrying ``pixels`` (FP32) in raw_input_contents, as tritonclient sends it."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=INPUT_NAME, datatype="FP32")
    tensor.shape.extend(pixels.shape)
    request.outputs.add(name=OUTPUT_NAME)
    request.raw_input_contents.append(np.ascontiguousarray(pixels, dtype="<f4").tobytes())
    return request.SerializeToString()


def grpc_load(target: str, request: bytes, *, concurrency: int = 64, duration_s: float = 10, warmup_s: float = 1) -> GrpcResult:
    """Run the load in a child process (so that it has an interpreter lock of its own) and return its figures."""
    done = subprocess.run(
        [sys.executable, __file__, target, str(concurrency), str(duration_s), str(warmup_s)],
        input=request, capture_output=True, timeout=duration_s + warmup_s + 120,
    )
    if done.returncode:
        raise RuntimeError(f"the gRPC load process failed:\n{done.stderr.decode(errors='replace')}")
    head, _, answer = done.stdout.partition(b"\n")
    figures = json.loads(head)
    return GrpcResult(figures["rps"], figures["p50"], figures["p99"], figures["errors"], answer)


async def _drive(target: str, request: bytes, concurrency: int, duration_s: float, warmup_s: float) -> tuple[dict, bytes]:
    import grpc

    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        first = await call(request, timeout=60)
        start = time.monotonic() + warmup_s
        stop = start + duration_s
        latencies: list[float] = []
        errors = 0

        async def client() -> None:
            nonlocal errors
            while (t0 := time.monotonic()) < stop:
                try:
                    await call(request, timeout=60)
                    ok = True
                except grpc.aio.AioRpcError:
                    ok = False
                t1 = time.monotonic()
                if t0 >= start and t1 <= stop:
                    if ok:
                        latencies.append((t1 - t0) * 1000)
                    else:
                        errors += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (float("nan"),) * 2
    return {"rps": len(latencies) / duration_s, "p50": float(p50), "p99": float(p99), "errors": errors}, first


if __name__ == "__main__":
    target, concurrency, duration, warmup = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    figures, answer = asyncio.run(_drive(target, sys.stdin.buffer.read(), concurrency, duration, warmup))
    sys.stdout.buffer.write(json.dumps(figures).encode() + b"\n" + answer)
