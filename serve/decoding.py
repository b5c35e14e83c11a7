"""Turning request bodies into arrays, and arrays into response bodies, off the event loop.

On the event loop, parsing a large body would stall every other request,
health probes included. ``Decoder.run`` sends work by what it does to the
interpreter lock:

- work on small payloads runs inline: handing it over costs more than doing it;
- work that releases the lock (raw binary tensors: numpy's casts) runs in a
  thread pool;
- work that holds it runs in a process pool, since in a thread it would still
  stop the loop, health probes included, for as long as one native call takes:
  JSON parsing and encoding in pydantic-core and nested lists to numpy, zlib
  inflating a compressed body, Pillow decoding a PNG (which frees the lock only
  every switch interval).

Both pools have one worker per CPU this process may use, so a flood of large
bodies queues there instead of starving the loop, and their workers run at a
lower scheduling priority (nice +10): on a busy host the event loop, which
answers health probes and small requests, comes first.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, TypeVar

from elunet.runtime.cpus import available_cpus, lower_priority
from elunet.serve.errors import ServeError

log = logging.getLogger("elunet.serve")

T = TypeVar("T")
# Payloads below this many bytes are handled on the loop: decoding them there blocks it for less time than
# handing them to the process pool would cost the request (benchmarks/decode_inline.py measures both).
INLINE_BYTES = 64 * 1024


class Decoder:
    def __init__(self, workers: int | None = None, inline_bytes: int = INLINE_BYTES):
        self._workers = workers or available_cpus()
        self._threads = ThreadPoolExecutor(self._workers, thread_name_prefix="decode", initializer=lower_priority)
        self._processes = self._process_pool()
        self._restart: asyncio.Future | None = None  # the replacement pool's start, after a worker died
        self._inline = inline_bytes

    def _process_pool(self) -> ProcessPoolExecutor:
        # forkserver: the server process has threads, which fork must not copy.
        return ProcessPoolExecutor(self._workers, mp_context=multiprocessing.get_context("forkserver"), initializer=lower_priority)

    async def run(self, size: int, holds_gil: bool, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` where it costs the event loop least; ``size``: bytes of payload it works on.

        ``fn`` must be a module-level function with picklable arguments and result when
        ``holds_gil`` (it may run in another process).
        """
        if size < self._inline:
            return fn(*args)
        if holds_gil and self._restart is not None:
            await self._restarted()
        pool = self._processes if holds_gil else self._threads
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except BrokenProcessPool:
            # A worker was killed (out of memory, by hand): its pool is unusable for good. The requests
            # it held fail once, clearly; a new pool takes the next ones.
            if self._processes is pool:
                log.error("a decoding worker process died; starting a new pool")
                self._replace_process_pool()
            raise ServeError(
                503,
                "a decoding worker process died while handling this request (killed, or out of memory); the workers "
                "were restarted: send it again",
                reason="decoder_failed",
                headers={"Retry-After": "1"},
            ) from None

    def _replace_process_pool(self) -> None:
        self._processes = self._process_pool()
        self._restart = asyncio.ensure_future(self.start())
        self._restart.add_done_callback(_log_failed_restart)

    async def _restarted(self) -> None:
        """Wait until the replacement pool has started. If it could not start, this request gets a 503 that
        says so, and another pool is started for the next one: a pool that is not there never answers."""
        restart = self._restart
        try:
            await asyncio.shield(restart)  # shielded: a request that is cancelled must not cancel the start
        except Exception as exc:  # noqa: BLE001 - whatever stopped the workers from starting is this request's answer
            if self._restart is restart:
                self._replace_process_pool()
            raise ServeError(
                503,
                f"the decoding worker processes could not be restarted ({type(exc).__name__}: {exc}); trying again: send it again",
                reason="decoder_failed",
                headers={"Retry-After": "1"},
            ) from None
        if self._restart is restart:
            self._restart = None

    async def start(self) -> None:
        """Start every worker process now: the pool starts one when a call finds none idle, and that
        start (a fork through the fork server) would otherwise block the loop inside a request."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._processes, _ready, 0.2) for _ in range(self._workers)))

    def close(self) -> None:
        self._threads.shutdown(wait=True)
        self._processes.shutdown(wait=True)


def _log_failed_restart(restart: asyncio.Future) -> None:
    if not restart.cancelled() and (exc := restart.exception()) is not None:
        log.error("the decoding worker processes could not be restarted: %s: %s", type(exc).__name__, exc)


def _ready(hold_s: float) -> bool:
    import time

    import elunet.serve.tensors  # noqa: F401 - what the workers will run

    time.sleep(hold_s)  # stay busy, so that the other start calls find no idle worker and start their own
    return True
