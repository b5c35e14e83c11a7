"""DynamicBatcher on its own: batch formation, splitting, limits, timeouts, failures (synthetic arrays)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from elunet.serve.batching import BackendFailure, DynamicBatcher
from elunet.serve.errors import ServeError


class Recorder:
    """A backend stand-in that really computes (row sums) and records every batch it saw."""

    def __init__(self, delay_s: float = 0.0, fail_on: float | None = None):
        self.batches: list[int] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.batches.append(len(x))
        time.sleep(self.delay_s)
        if self.fail_on is not None and (x == self.fail_on).any():
            raise RuntimeError("poisoned input")
        return x.reshape(len(x), -1).sum(axis=1, keepdims=True) * 2


def run(coro):
    return asyncio.run(coro)


def test_every_request_gets_its_own_rows_and_batches_never_exceed_the_maximum():
    backend = Recorder(delay_s=0.002)
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(int(rng.integers(1, 6)), 3)).astype(np.float32) for _ in range(300)]

    async def main():
        b = DynamicBatcher(backend, max_batch_size=8, max_queue_delay_s=0.005, max_queue_size=10_000, workers=2)
        outs = await asyncio.gather(*(b.submit(x) for x in inputs))
        await b.close()
        return outs

    for x, y in zip(inputs, run(main())):
        np.testing.assert_array_equal(y, x.sum(axis=1, keepdims=True) * 2)
    assert max(backend.batches) <= 8
    assert sum(backend.batches) == sum(len(x) for x in inputs)
    assert np.mean(backend.batches) > 2, "under load, requests should be merged into batches"
    assert all(name.startswith("infer-") for name in backend.threads), "inference must run off the event loop"


def test_a_request_larger_than_the_maximum_is_split_and_reassembled_in_order():
    backend = Recorder()
    x = np.arange(20, dtype=np.float32).reshape(20, 1)

    async def main():
        b = DynamicBatcher(backend, max_batch_size=6, max_queue_delay_s=0.0, max_queue_size=100)
        y = await b.submit(x)
        await b.close()
        return y

    np.testing.assert_array_equal(run(main()), x * 2)
    assert max(backend.batches) <= 6


def test_a_lone_request_leaves_after_the_queue_delay_not_before():
    backend = Recorder()

    async def main():
        b = DynamicBatcher(backend, max_batch_size=64, max_queue_delay_s=0.2, max_queue_size=100)
        t0 = time.monotonic()
        await b.submit(np.ones((1, 1), np.float32))
        waited = time.monotonic() - t0
        await b.close()
        return waited

    waited = run(main())
    assert 0.18 <= waited < 2.0


def test_a_full_batch_leaves_without_waiting_for_the_delay():
    backend = Recorder()

    async def main():
        b = DynamicBatcher(backend, max_batch_size=4, max_queue_delay_s=5.0, max_queue_size=100)
        t0 = time.monotonic()
        await asyncio.gather(*(b.submit(np.ones((1, 1), np.float32)) for _ in range(4)))
        waited = time.monotonic() - t0
        await b.close()
        return waited

    assert run(main()) < 1.0
    assert backend.batches == [4]


def test_full_queue_is_refused_with_503_and_places_free_up_when_requests_time_out():
    async def main():
        b = DynamicBatcher(Recorder(), max_batch_size=64, max_queue_delay_s=0.5, max_queue_size=4)
        first = asyncio.create_task(asyncio.wait_for(b.submit(np.ones((4, 1), np.float32)), 0.05))
        await asyncio.sleep(0.01)
        with pytest.raises(ServeError) as refused:
            await b.submit(np.ones((1, 1), np.float32))
        with pytest.raises(TimeoutError):
            await first
        assert b.depth == 0, "a timed-out request must give back its queue places"
        y = await b.submit(np.full((2, 1), 3, np.float32))
        await b.close()
        return refused.value, y

    refused, y = run(main())
    assert refused.status == 503 and refused.headers.get("Retry-After")
    np.testing.assert_array_equal(y, np.full((2, 1), 6))


def test_a_backend_failure_fails_only_the_requests_of_that_batch():
    backend = Recorder(fail_on=-1.0)

    async def main():
        b = DynamicBatcher(backend, max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=100)
        results = await asyncio.gather(
            b.submit(np.full((1, 1), -1, np.float32)), b.submit(np.ones((1, 1), np.float32)), return_exceptions=True
        )
        later = await b.submit(np.ones((1, 1), np.float32))
        await b.close()
        return results, later

    (bad, good), later = run(main())
    assert isinstance(bad, BackendFailure) and "poisoned" in str(bad)
    np.testing.assert_array_equal(good, [[2.0]])
    np.testing.assert_array_equal(later, [[2.0]])


def test_close_answers_everything_queued_without_waiting_for_the_delay():
    backend = Recorder()

    async def main():
        b = DynamicBatcher(backend, max_batch_size=64, max_queue_delay_s=30.0, max_queue_size=100)
        pending = [asyncio.create_task(b.submit(np.full((1, 1), i, np.float32))) for i in range(10)]
        await asyncio.sleep(0.01)
        t0 = time.monotonic()
        await b.close()
        with pytest.raises(ServeError):
            await b.submit(np.ones((1, 1), np.float32))
        return [await p for p in pending], time.monotonic() - t0

    outs, took = run(main())
    assert [float(o[0, 0]) for o in outs] == [2.0 * i for i in range(10)]
    assert took < 5.0
