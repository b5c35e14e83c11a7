"""Dynamic batching, kept apart from any model code.

Each served model owns one ``DynamicBatcher``. Requests (one or several images
each) wait in a queue; a batch leaves when it holds ``max_batch_size`` images
or when its oldest request has waited ``max_queue_delay``. Requests are
concatenated into one array, computed in a worker thread (so the event loop
keeps answering health checks and accepting requests), and the result rows are
split back to their requests. A request never straddles two batches unless it
alone is larger than the maximum, in which case it is cut into chunks that are
queued together.

A batch is formed only when a worker thread is free: while all workers are
busy, requests accumulate, so batches grow with load instead of piling up
behind the workers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from elunet.serve.errors import ServeError

log = logging.getLogger("elunet.serve")


class BatchObserver(Protocol):
    """What the batcher reports (implemented by the Prometheus metrics)."""

    def queue_depth(self, images: int) -> None: ...

    def queued(self, seconds: float) -> None: ...

    def computed(self, batch_size: int, seconds: float) -> None: ...


class BackendFailure(Exception):
    """The backend raised while computing a batch; every request of that batch fails with it."""


@dataclass
class _Item:
    inputs: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    # Whether its images still count towards the queue depth.
    counted: bool = True


class DynamicBatcher:
    def __init__(
        self,
        infer: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        workers: int = 1,
        observer: BatchObserver | None = None,
        name: str = "model",
    ):
        self._infer = infer
        self.max_batch_size = max_batch_size
        self._delay = max_queue_delay_s
        self._max_queue = max_queue_size
        self._observer = observer
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=f"infer-{name}")
        self._slots = asyncio.Semaphore(workers)
        self._pending: deque[_Item] = deque()
        self._pending_images = 0
        self._wakeup = asyncio.Event()
        self._running: set[asyncio.Task] = set()
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._form_batches())

    @property
    def depth(self) -> int:
        """Images waiting (not yet in a batch)."""
        return self._pending_images

    async def submit(self, inputs: np.ndarray) -> np.ndarray:
        """Queue ``inputs`` [n, ...]; return the backend's output rows for exactly these inputs."""
        if self._closing:
            raise ServeError(503, "server is shutting down", reason="shutting_down", headers={"Retry-After": "1"})
        n = len(inputs)
        if self._pending_images + n > self._max_queue:
            raise ServeError(
                503,
                f"queue full: {self._pending_images} images waiting, this request adds {n}, the limit is {self._max_queue}",
                reason="queue_full",
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        chunks = [inputs[i : i + self.max_batch_size] for i in range(0, n, self.max_batch_size)]
        items = [_Item(chunk, loop.create_future()) for chunk in chunks]
        self._pending.extend(items)
        self._pending_images += n
        self._report_depth()
        self._wakeup.set()
        try:
            if len(items) == 1:
                return await items[0].future
            return np.concatenate(await asyncio.gather(*(item.future for item in items)))
        except asyncio.CancelledError:
            # The request timed out or its client left: free its queue places at once.
            for item in items:
                item.future.cancel()
                self._uncount(item)
            self._report_depth()
            raise

    async def close(self) -> None:
        """Answer everything queued (without waiting for the delay), then stop."""
        self._closing = True
        self._wakeup.set()
        await self._task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def _form_batches(self) -> None:
        while True:
            await self._slots.acquire()
            batch = await self._next_batch()
            if batch is None:
                self._slots.release()
                return
            if not batch:  # every waiting request had timed out
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._compute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[_Item] | None:
        while not self._pending:
            if self._closing:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._pending[0].enqueued + self._delay
        while self._pending_images < self.max_batch_size and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        return self._take()

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        size = 0
        while self._pending:
            item = self._pending[0]
            n = len(item.inputs)
            if not item.future.done() and size + n > self.max_batch_size:
                break
            self._pending.popleft()
            self._uncount(item)
            if item.future.done():  # cancelled by its request's timeout
                continue
            batch.append(item)
            size += n
        self._report_depth()
        return batch

    async def _compute(self, batch: list[_Item]) -> None:
        try:
            start = time.monotonic()
            if self._observer:
                for item in batch:
                    self._observer.queued(start - item.enqueued)
            inputs = batch[0].inputs if len(batch) == 1 else np.concatenate([item.inputs for item in batch])
            try:
                outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._infer, inputs)
                if len(outputs) != len(inputs):
                    raise RuntimeError(f"backend returned {len(outputs)} rows for a batch of {len(inputs)}")
            except Exception as exc:  # noqa: BLE001 - any backend failure fails this batch only
                failure = BackendFailure(f"{type(exc).__name__}: {exc}")
                log.error("batch of %d images (%d requests) failed: %s", len(inputs), len(batch), failure)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(failure)
                return
            if self._observer:
                self._observer.computed(len(inputs), time.monotonic() - start)
            offset = 0
            for item in batch:
                n = len(item.inputs)
                if not item.future.done():
                    item.future.set_result(outputs[offset : offset + n])
                offset += n
        finally:
            self._slots.release()

    def _uncount(self, item: _Item) -> None:
        if item.counted:
            item.counted = False
            self._pending_images -= len(item.inputs)

    def _report_depth(self) -> None:
        if self._observer:
            self._observer.queue_depth(self._pending_images)
