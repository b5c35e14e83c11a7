"""Where `serve/decoding.py` stops decoding on the event loop (INLINE_BYTES), measured.

For V2 JSON infer bodies of growing size, one run prints the median time to
decode a body inline (what the event loop would be blocked for), and the
median round trip of the same decode through the server's process pool
(what handing it over costs the request). Below the threshold, inline is the
cheaper and the loop is blocked for well under a millisecond.

    python benchmarks/decode_inline.py
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import numpy as np

from elunet.serve.decoding import INLINE_BYTES, Decoder
from elunet.contracts import INPUT_NAME
from elunet.model_config import TensorSignature
from elunet.serve.tensors import decode_infer

SHAPE = (1, 28, 28)  # fashion-cnn's input
MODEL_INPUT = TensorSignature(INPUT_NAME, "FP32", SHAPE)
REPEATS = 40


def body_of(images: int) -> bytes:
    x = np.random.default_rng(0).random((images, *SHAPE), dtype=np.float32)
    return json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}).encode()


async def main() -> None:
    decoder = Decoder(inline_bytes=0)  # everything through the pools, to time the hand-over
    await decoder.start()
    print(f"threshold now: {INLINE_BYTES // 1024} KiB; {REPEATS} repeats each, medians")
    print(f"{'body':>10}{'inline (loop blocked)':>24}{'process pool round trip':>26}")
    for images in (1, 2, 4, 8, 16, 32):
        body = body_of(images)
        inline, pooled = [], []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            decode_infer(body, None, None, 1 << 30, MODEL_INPUT)
            inline.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await decoder.run(len(body), True, decode_infer, body, None, None, 1 << 30, MODEL_INPUT)
            pooled.append(time.perf_counter() - t0)
        print(f"{len(body) / 1024:>8.0f} KiB{statistics.median(inline) * 1000:>20.2f} ms{statistics.median(pooled) * 1000:>22.2f} ms")
    decoder.close()


if __name__ == "__main__":
    asyncio.run(main())
