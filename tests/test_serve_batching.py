"""DynamicBatcher on its own: batch formation, splitting, limits, timeouts, failures (synthetic arrays)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

import numpy as np
import pytest

from elunet.runtime import Engine, Instance, InstanceBusy
from elunet.runtime.cpus import WORKER_NICE
from elunet.serve.batching import BackendFailure, DynamicBatcher
from elunet.serve.errors import ServeError


class RecorderEngine(Engine):
    """Synthetic engine for the batcher alone: instances really compute (row sums x 2) and record every batch."""

    kind, platform, device, name = "synthetic", "synthetic", "cpu", "synthetic recorder"

    def __init__(self, delay_s: float = 0.0, fail_on: float | None = None):
        self.batches: list[int] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.threads: set[str] = set()
        self.created: list[Instance] = []
        self.nice: set[int] = set()

    def create_instance(self) -> Instance:
        self.created.append(RecorderInstance(self, len(self.created)))
        self.created[-1].batches = []  # this instance's own, beside the engine's list of all
        return self.created[-1]


class RecorderInstance(Instance):
    def _infer(self, x: np.ndarray) -> np.ndarray:
        engine = self.engine
        engine.threads.add(threading.current_thread().name)
        engine.batches.append(len(x))
        self.batches.append(len(x))
        if hasattr(os, "getpriority"):
            engine.nice.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        time.sleep(engine.delay_s)
        if engine.fail_on is not None and (x == engine.fail_on).any():
            raise RuntimeError("poisoned input")
        return x.reshape(len(x), -1).sum(axis=1, keepdims=True) * 2


def Recorder(delay_s: float = 0.0, fail_on: float | None = None, instances: int = 1) -> list[Instance]:
    engine = RecorderEngine(delay_s, fail_on)
    return [engine.create_instance() for _ in range(instances)]


def run(coro):
    return asyncio.run(coro)


def test_every_request_gets_its_own_rows_and_batches_never_exceed_the_maximum():
    backend = Recorder(delay_s=0.002, instances=2)
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(int(rng.integers(1, 6)), 3)).astype(np.float32) for _ in range(300)]

    async def main():
        b = DynamicBatcher(backend, max_batch_size=8, max_queue_delay_s=0.005, max_queue_size=10_000)
        outs = await asyncio.gather(*(b.submit(x) for x in inputs))
        await b.close()
        return outs

    for x, y in zip(inputs, run(main())):
        np.testing.assert_array_equal(y, x.sum(axis=1, keepdims=True) * 2)
    assert max(backend[0].engine.batches) <= 8
    assert sum(backend[0].engine.batches) == sum(len(x) for x in inputs)
    assert np.mean(backend[0].engine.batches) > 2, "under load, requests should be merged into batches"
    assert all(name.startswith("infer-") for name in backend[0].engine.threads), "inference must run off the event loop"


def test_a_request_larger_than_the_maximum_is_split_and_reassembled_in_order():
    backend = Recorder()
    x = np.arange(20, dtype=np.float32).reshape(20, 1)

    async def main():
        b = DynamicBatcher(backend, max_batch_size=6, max_queue_delay_s=0.0, max_queue_size=100)
        y = await b.submit(x)
        await b.close()
        return y

    np.testing.assert_array_equal(run(main()), x * 2)
    assert max(backend[0].engine.batches) <= 6


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


def test_a_burst_parsed_in_one_turn_of_the_loop_leaves_in_batches_as_the_delay_runs_out():
    # 40 requests whose handlers each hold the loop 1 ms (parsing), all woken in one turn: a client burst. The batch
    # of the oldest must leave once it has waited the 2 ms delay, while the rest of the burst is still being parsed,
    # so that parsing and computing overlap; it must not wait for the end of the burst and take all 40.
    backend = Recorder(delay_s=0.001, instances=2)
    started: list[float] = []

    async def main():
        b = DynamicBatcher(backend, max_batch_size=64, max_queue_delay_s=0.002, max_queue_size=100)

        async def request(k: int):
            time.sleep(0.001)  # the handler's parsing, on the loop
            started.append(time.monotonic())
            return await b.submit(np.full((1, 1), k, np.float32))

        outs = await asyncio.gather(*(request(k) for k in range(40)))
        await b.close()
        return outs

    outs = run(main())
    assert [float(o[0, 0]) for o in outs] == [2.0 * k for k in range(40)]
    batches = backend[0].engine.batches
    assert len(batches) >= 2 and batches[0] <= 6, f"batches {batches}: the first should leave ~2 ms into the 40 ms burst"
    assert sum(batches) == 40


def test_an_instance_takes_its_next_batch_in_its_own_thread_while_the_loop_is_busy():
    # 12 requests queue behind a first batch of one; then the loop is held 0.6 s (parsing a burst, say). Each batch
    # that finishes must start the next in the instance's thread: all four batches compute within the hold, none
    # waits for the loop to come back.
    (instance,) = Recorder(delay_s=0.03)
    engine = instance.engine

    async def main():
        b = DynamicBatcher([instance], max_batch_size=4, max_queue_delay_s=0.0)
        tasks = [asyncio.ensure_future(b.submit(np.full((1, 1), k, np.float32))) for k in range(13)]
        await asyncio.sleep(0)  # every submit has queued; the first left alone (no delay)
        time.sleep(0.6)
        during = list(engine.batches)
        outs = await asyncio.gather(*tasks)
        await b.close()
        return during, outs

    during, outs = run(main())
    assert [float(o[0, 0]) for o in outs] == [2.0 * k for k in range(13)]
    assert engine.batches == [1, 4, 4, 4], engine.batches
    assert during == engine.batches, f"only {during} computed while the loop was held"
    assert engine.threads and all(name.startswith("infer-") for name in engine.threads)


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
    assert backend[0].engine.batches == [4]


def test_full_queue_is_refused_with_503_and_places_free_up_when_requests_time_out():
    async def main():
        b = DynamicBatcher(Recorder(), max_batch_size=64, max_queue_delay_s=0.5, max_queue_size=1)  # requests, as Triton counts
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


def test_preferred_batch_sizes_leave_at_once_and_the_rest_waits_for_the_delay():
    backend = Recorder()

    async def main():
        b = DynamicBatcher(backend, max_batch_size=32, max_queue_delay_s=0.3, preferred_batch_sizes=[4, 8])
        t0 = time.monotonic()
        await asyncio.gather(*(b.submit(np.ones((1, 1), np.float32)) for _ in range(4)))  # 4 is preferred
        preferred = time.monotonic() - t0
        t0 = time.monotonic()
        await asyncio.gather(*(b.submit(np.ones((1, 1), np.float32)) for _ in range(3)))  # 3 is not: the delay
        other = time.monotonic() - t0
        await b.close()
        return preferred, other

    preferred, other = run(main())
    assert backend[0].engine.batches == [4, 3]
    assert preferred < 0.2 <= 0.25 <= other


def test_without_dynamic_batching_every_request_is_its_own_batch():
    backend = Recorder()

    async def main():
        b = DynamicBatcher(backend, max_batch_size=32, max_queue_delay_s=0.1, dynamic=False)
        await asyncio.gather(*(b.submit(np.ones((2, 1), np.float32)) for _ in range(5)))
        await b.close()

    run(main())
    assert backend[0].engine.batches == [2] * 5


def test_two_instances_share_the_load_and_never_compute_two_batches_at_once():
    instances = Recorder(delay_s=0.003, instances=2)
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(int(rng.integers(1, 4)), 3)).astype(np.float32) for _ in range(200)]

    async def main():
        b = DynamicBatcher(instances, max_batch_size=4, max_queue_delay_s=0.001)
        outs = await asyncio.gather(*(b.submit(x) for x in inputs))
        await b.close()
        return outs

    for x, y in zip(inputs, run(main())):
        np.testing.assert_allclose(y, x.sum(axis=1, keepdims=True) * 2, rtol=1e-6)
    assert all(i.executions > 0 for i in instances), "both instances must take batches"
    assert [i.overlaps for i in instances] == [0, 0]


def test_an_instance_refuses_a_second_batch_while_it_computes():
    (instance,) = Recorder(delay_s=0.2)
    outcome: list[object] = []

    def call():
        try:
            outcome.append(instance.infer(np.ones((1, 1), np.float32)))
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            outcome.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [o for o in outcome if isinstance(o, InstanceBusy)]
    assert len(refused) == 1 and instance.overlaps == 1 and instance.executions == 1


def test_with_two_instances_a_burst_is_shared_between_them_not_taken_by_one():
    # Triton's rule alone gives all 10 to the instance that is free first (the other then idles, and under load
    # the instances drift into one large and one small batch); an even share of what waits and computes gives 5 + 5.
    backend = Recorder(delay_s=0.05, instances=2)

    async def main():
        b = DynamicBatcher(backend, max_batch_size=64, max_queue_delay_s=0.02, max_queue_size=100)
        outs = await asyncio.gather(*(b.submit(np.full((1, 1), k, np.float32)) for k in range(10)))
        await b.close()
        return outs

    outs = run(main())
    assert [float(y[0, 0]) for y in outs] == [2.0 * k for k in range(10)]
    assert sorted(backend[0].engine.batches) == [5, 5]
    assert [i.batches for i in backend] == [[5], [5]], "one batch on each instance"


def test_the_share_never_splits_a_request_or_sends_a_batch_before_its_delay():
    backend = Recorder(delay_s=0.05, instances=2)

    async def main():
        b = DynamicBatcher(backend, max_batch_size=64, max_queue_delay_s=0.2, max_queue_size=100)
        t0 = time.monotonic()
        big = asyncio.ensure_future(b.submit(np.ones((9, 1), np.float32)))  # larger than half of the 10 images
        small = asyncio.ensure_future(b.submit(np.ones((1, 1), np.float32)))
        await asyncio.gather(big, small)
        waited = time.monotonic() - t0
        await b.close()
        return waited

    waited = run(main())
    assert sorted(backend[0].engine.batches) == [1, 9]
    assert waited >= 0.18, "neither batch was full: both wait for the queue delay"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own nice value is Linux's")
def test_inference_threads_run_below_the_event_loop():
    backend = Recorder(instances=2)

    async def main():
        b = DynamicBatcher(backend, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=100)
        await asyncio.gather(*(b.submit(np.ones((1, 1), np.float32)) for _ in range(8)))
        await b.close()

    run(main())
    loop_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert backend[0].engine.nice == {min(19, loop_nice + WORKER_NICE)}
