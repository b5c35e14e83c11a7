"""The decoding pools: a worker process that dies is replaced, and a replacement that fails to start is seen.

A real process pool (forkserver), as the server runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import pytest

import elunet.serve.decoding
from elunet.runtime.cpus import available_cpus
from elunet.serve.decoding import Decoder
from elunet.serve.errors import ServeError


def _fail_to_start() -> None:
    """A worker initializer that fails, as one would where the host can no longer start processes."""
    raise OSError("no more processes")


def test_a_worker_that_dies_fails_its_request_with_503_and_a_new_pool_answers_the_next():
    async def scenario():
        decoder = Decoder(workers=1, inline_bytes=0)
        try:
            await decoder.start()
            with pytest.raises(ServeError) as died:
                await decoder.run(1, True, os._exit, 1)
            assert (died.value.status, died.value.reason) == (503, "decoder_failed")
            return await asyncio.wait_for(decoder.run(1, True, abs, -3), 60)
        finally:
            decoder.close()

    assert asyncio.run(scenario()) == 3


def test_a_pool_restart_that_fails_is_logged_and_answers_the_next_request_with_503(monkeypatch, caplog):
    async def scenario():
        decoder = Decoder(workers=1, inline_bytes=0)
        try:
            await decoder.start()
            assert await decoder.run(1, True, abs, -3) == 3
            # The replacement pool's workers will fail to start (looked up when a pool is made).
            monkeypatch.setattr(elunet.serve.decoding, "lower_priority", _fail_to_start)
            with pytest.raises(ServeError) as died:
                await decoder.run(1, True, os._exit, 1)  # the worker dies under this request
            assert (died.value.status, died.value.reason) == (503, "decoder_failed")
            with pytest.raises(ServeError) as next_one:
                await asyncio.wait_for(decoder.run(1, True, abs, -3), 60)
            return next_one.value
        finally:
            decoder.close()

    with caplog.at_level(logging.ERROR, logger="elunet.serve"):
        error = asyncio.run(scenario())
    assert (error.status, error.reason) == (503, "decoder_failed")
    assert "could not be restarted" in error.message and "BrokenProcessPool" in error.message, error.message
    assert any("could not be restarted" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="counts processes in Linux's /proc")
def test_the_decode_workers_setting_starts_that_many_worker_processes(start_server, synthetic_repository):
    """--decode-workers: the pool's processes are the fork server's children (serve/decoding.py: forkserver);
    one more than the CPUs, so that the default (one per CPU) would fail it."""
    wanted = available_cpus() + 1
    server = start_server(synthetic_repository, decode_workers=wanted, allow_unverified=True)
    fork_servers = [pid for pid in _children(server.proc.pid) if b"forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(fork_servers) == 1, fork_servers
    assert len(_children(fork_servers[0])) == wanted
    server.stop()
