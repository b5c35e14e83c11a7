"""Dynamic batching over a model's instances, kept apart from any model code.

Each served model version owns one ``DynamicBatcher`` and its instances
(elunet.runtime.Instance). Requests (one or several images each) wait in a
queue. Whenever an instance is free, a batch is formed from the oldest
requests, Triton's way:

- a batch never exceeds ``max_batch_size`` images, and a request is never
  split across batches unless it alone is larger, when it is cut into chunks
  that are queued together;
- a batch that is full (the next request would not fit) leaves at once; so
  does the largest batch of one of the ``preferred_batch_sizes`` that the
  waiting requests can make;
- otherwise the batch waits for more requests until its oldest request has
  waited ``max_queue_delay``, then leaves with what there is;
- with several instances, a batch that leaves full or after the delay takes
  no more than an even share of the images waiting and being computed (its
  first request whole, whatever its size); the rest wait for the next free
  instance;
- without dynamic batching (``dynamic=False``, a config.pbtxt with no
  ``dynamic_batching``) every request is its own batch.

The batch is computed on that one instance in a worker thread (the event loop
keeps answering), and the instance is free again only when it is done: no
instance ever computes two batches at once. Those threads run at nice +10:
the loop, which feeds them, gets a CPU the moment it has work, so on a host
with few cores the instances do not starve the parser that fills their next
batch. While every instance is busy, requests accumulate, so batches grow
with load.

The rules are applied the moment anything changes, by whoever changed it: on
the event loop when a request arrives or the oldest request's delay runs out,
and in the instance's own thread when it finishes a batch. An instance that
finishes takes its next batch there and then and computes it in the same
thread, posting the finished batch's answers to the loop; it waits for the
loop only when no batch may leave yet. The queue and the free instances are
shared between the loop and those threads under one lock.

This avoids two ways to be late. A batcher that woke up only on its own turn
of the event loop would see a burst of requests (every client answered by one
batch, all sending again) only after the loop had parsed the whole burst:
every request would join one batch far past its delay, and parsing and
computing would take turns instead of overlapping. And an instance that went
back to the loop after each batch would stand idle until the loop reached that
callback and woke its thread again, for much of each batch's time under load.

The share keeps the instances' batches alike. Without it (Triton's rule), a
free instance takes every request waiting, up to the maximum: one instance
then computes a large batch while the other goes round with small ones, and
the large batch's answers, all sent at once, come back as the next large
batch. With it, batches are of like sizes, which gives more requests/s and a
shorter tail of latency (benchmarks/serve_peers.py; README, "Beside MLServer
and LitServe").
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from elunet.runtime import Instance
from elunet.runtime.cpus import lower_priority
from elunet.serve.errors import ServeError

log = logging.getLogger("elunet.serve")


class BatchObserver(Protocol):
    """What the batcher reports (implemented by the Prometheus metrics)."""

    def queue_depth(self, requests: int) -> None: ...

    def computed(self, batch_size: int, input_s: float, infer_s: float, output_s: float) -> None: ...

    def instance_ran(self, instance: Instance) -> None: ...


class BackendFailure(Exception):
    """The engine raised while computing a batch; every request of that batch fails with it."""


@dataclass
class RequestTiming:
    """What a request spent in the batcher, filled in before its answer is: the longest wait of its chunks
    in the queue, and the engine time of the batches that computed them (each batch's whole time, as Triton
    counts a batch's compute time for every request in it)."""

    queue_s: float = 0.0
    infer_s: float = 0.0


@dataclass
class _Item:
    inputs: np.ndarray
    future: asyncio.Future
    timing: RequestTiming
    enqueued: float = field(default_factory=time.monotonic)
    # Whether it still counts towards the queue size (the first chunk of a request counts for it).
    counted: bool = True


@dataclass
class _Timing:
    started: float
    gathered: float = 0.0
    computed: float = 0.0


class DynamicBatcher:
    def __init__(
        self,
        instances: Sequence[Instance],
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int = 0,
        preferred_batch_sizes: Sequence[int] = (),
        dynamic: bool = True,
        observer: BatchObserver | None = None,
        name: str = "model",
    ):
        """``max_queue_size``: requests that may wait (0: no limit), as Triton's queue policy counts them."""
        if not instances:
            raise ValueError("a batcher needs at least one instance")
        self.instances = list(instances)
        self.max_batch_size = max_batch_size
        self._delay = max_queue_delay_s
        self._max_queue = max_queue_size
        self._preferred = frozenset(n for n in preferred_batch_sizes if 0 < n <= max_batch_size)
        self._dynamic = dynamic
        self._observer = observer
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(len(self.instances), thread_name_prefix=f"infer-{name}", initializer=lower_priority)
        # The queue and the free instances, shared by the loop and the instances' threads.
        self._lock = threading.Lock()
        self._free: deque[Instance] = deque(self.instances)
        self._pending: deque[_Item] = deque()
        self._pending_requests = 0
        self._pending_images = 0
        self._computing_images = 0  # in the batches the instances compute now
        self._closing = False
        # The loop's alone.
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0  # when the timer fires
        self._running: set[asyncio.Future] = set()

    @property
    def depth(self) -> int:
        """Requests waiting (not yet in a batch)."""
        return self._pending_requests

    async def submit(self, inputs: np.ndarray, timing: RequestTiming | None = None) -> np.ndarray:
        """Queue ``inputs`` [n, ...]; return the engine's output rows for exactly these inputs (``timing``: filled in)."""
        if self._closing:
            raise ServeError(503, "server is shutting down", reason="shutting_down", headers={"Retry-After": "1"})
        n = len(inputs)
        chunks = [inputs[i : i + self.max_batch_size] for i in range(0, n, self.max_batch_size)]
        timing = timing or RequestTiming()
        items = [_Item(chunk, self._loop.create_future(), timing, counted=k == 0) for k, chunk in enumerate(chunks)]
        with self._lock:
            if self._max_queue and self._pending_requests >= self._max_queue:
                raise ServeError(
                    503,
                    f"queue full: {self._pending_requests} requests waiting, the limit is {self._max_queue}",
                    reason="queue_full",
                    headers={"Retry-After": "1"},
                )
            self._pending.extend(items)
            self._pending_requests += 1
            self._pending_images += n
            self._report_depth()
        self._dispatch()
        try:
            if len(items) == 1:
                return await items[0].future
            return np.concatenate(await asyncio.gather(*(item.future for item in items)))
        except asyncio.CancelledError:
            # The request timed out or its client left: free its queue place at once.
            with self._lock:
                for item in items:
                    item.future.cancel()
                    self._uncount(item)
                self._report_depth()
            raise

    async def close(self) -> None:
        """Answer everything queued (without waiting for the delay), then stop."""
        self._closing = True
        self._dispatch()
        while self._running:  # an instance's thread ends once nothing is left to take
            await asyncio.wait(set(self._running))
        if self._timer:
            self._timer.cancel()
        self._executor.shutdown(wait=True)

    def _dispatch(self) -> None:
        """On the loop: start every batch that may leave now on a free instance, in a thread of its own;
        else wake up when the oldest request's delay ends."""
        while True:
            with self._lock:
                if not self._free:
                    return
                batch, wake = self._next()
                if batch is None:
                    break
                instance = self._free.popleft()
            self._start(instance, batch)
        if wake is not None:
            self._wake_at(wake)

    def _next(self) -> tuple[list[_Item] | None, float | None]:
        """With the lock held: (the next batch, taken from the queue, or None; when to look again if none may leave yet)."""
        while True:
            self._drop_cancelled()
            if not self._pending:
                return None, None
            count = self._ready()
            if count is None:
                return None, self._pending[0].enqueued + self._delay
            batch = self._take(count)
            if batch:  # else every request taken had timed out
                return batch, None

    def _ready(self) -> int | None:
        """How many of the oldest requests leave as one batch now by the rules above, or None to wait."""
        if not self._dynamic:
            return 1
        fits, total, preferred, shared = self._prefix()
        if total == self.max_batch_size or fits < len(self._pending):  # as full as it can get
            return shared
        if preferred:
            return preferred
        if self._closing or self._pending[0].enqueued + self._delay <= time.monotonic():
            return shared
        return None

    def _wake_at(self, deadline: float) -> None:
        # call_later, not call_at: uvloop's loop.time() is not time.monotonic().
        if self._timer and not self._timer.cancelled() and self._deadline <= deadline:
            return
        if self._timer:
            self._timer.cancel()
        self._deadline = deadline
        self._timer = self._loop.call_later(max(0.0, deadline - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _prefix(self) -> tuple[int, int, int, int]:
        """(how many of the oldest requests fit into one batch, their images, the longest prefix of them
        whose images make a preferred batch size or 0, the longest prefix within the instance's share or 1);
        one pass that stops at the batch limit."""
        share = -(-(self._pending_images + self._computing_images) // len(self.instances))
        fits = total = preferred = shared = 0
        for item in self._pending:
            if fits and total + len(item.inputs) > self.max_batch_size:
                break
            total += len(item.inputs)
            fits += 1
            if total in self._preferred:
                preferred = fits
            if total <= share or fits == 1:
                shared = fits
        return fits, total, preferred, shared

    def _drop_cancelled(self) -> None:
        while self._pending and self._pending[0].future.done():
            self._pending_images -= len(self._pending[0].inputs)
            self._uncount(self._pending.popleft())

    def _take(self, count: int) -> list[_Item]:
        batch: list[_Item] = []
        for _ in range(count):
            item = self._pending.popleft()
            self._pending_images -= len(item.inputs)
            self._uncount(item)
            if not item.future.done():  # not cancelled by its request's timeout
                batch.append(item)
                self._computing_images += len(item.inputs)
        self._report_depth()
        return batch

    def _start(self, instance: Instance, batch: list[_Item]) -> None:
        future = self._loop.run_in_executor(self._executor, self._serve, instance, batch)
        self._running.add(future)
        future.add_done_callback(self._running.discard)

    def _serve(self, instance: Instance, batch: list[_Item]) -> None:
        """In the instance's thread: compute ``batch``, then each next batch that may leave, until none may yet."""
        while batch is not None:
            timing = _Timing(time.monotonic())
            try:
                outputs: np.ndarray | Exception = _compute(instance, batch, timing)
            except Exception as exc:  # noqa: BLE001 - any engine failure fails this batch only
                outputs = exc
            with self._lock:
                self._computing_images -= sum(len(item.inputs) for item in batch)
                done, (batch, wake) = batch, self._next()
                if batch is None:
                    self._free.append(instance)
            self._loop.call_soon_threadsafe(self._answer, instance, done, timing, outputs, wake)

    def _answer(self, instance: Instance, batch: list[_Item], timing: _Timing, outputs: np.ndarray | Exception, wake: float | None) -> None:
        """On the loop: the answers of a batch ``instance`` computed; ``wake``: when a batch may leave, if none could."""
        if wake is not None:
            self._wake_at(wake)
        elif self._free and self._pending:  # the instance left an even share to one that is free
            self._dispatch()
        t = timing
        if isinstance(outputs, Exception):
            failure = BackendFailure(f"{type(outputs).__name__}: {outputs}")
            images = sum(len(item.inputs) for item in batch)
            log.error("batch of %d images (%d requests) failed on instance %d: %s", images, len(batch), instance.index, failure)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(failure)
        else:
            offset = 0
            for item in batch:
                n = len(item.inputs)
                item.timing.queue_s = max(item.timing.queue_s, t.started - item.enqueued)
                item.timing.infer_s += t.computed - t.gathered
                if not item.future.done():
                    item.future.set_result(outputs[offset : offset + n])
                offset += n
        if self._observer:
            if not isinstance(outputs, Exception):
                self._observer.computed(len(outputs), t.gathered - t.started, t.computed - t.gathered, time.monotonic() - t.computed)
            self._observer.instance_ran(instance)

    def _uncount(self, item: _Item) -> None:
        if item.counted:
            item.counted = False
            self._pending_requests -= 1

    def _report_depth(self) -> None:
        """With the lock held, so that the gauge's last value is the queue's."""
        if self._observer:
            self._observer.queue_depth(self._pending_requests)


def _compute(instance: Instance, batch: list[_Item], timing: _Timing) -> np.ndarray:
    """In an inference thread: the batch's rows, gathered and computed on ``instance``."""
    inputs = batch[0].inputs if len(batch) == 1 else np.concatenate([item.inputs for item in batch])
    timing.gathered = time.monotonic()
    outputs = instance.infer(inputs)
    timing.computed = time.monotonic()
    if len(outputs) != len(inputs):
        raise RuntimeError(f"engine returned {len(outputs)} rows for a batch of {len(inputs)}")
    return outputs
