"""Wait, before the process exits, until the kernel has delivered the last answers.

A closed socket's unsent or unacknowledged bytes stay with the kernel, which
goes on sending them after the process has gone — unless the network namespace
goes too. In a container it does: once its last process exits, the runtime
deletes the namespace with every socket in it, and the answers still queued
there are never retransmitted (the deploy check saw 2-9 answers logged as 200
and never received, in about half of the `docker-compose down` runs). So after
the drain the server reads the namespace's TCP table (/proc/net/tcp{,6}) and
waits, bounded, until no connection on its own ports has bytes in flight.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterable

log = logging.getLogger("elunet.serve")

TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_LISTEN = "0A"  # the kernel's TCP_LISTEN, as /proc/net/tcp writes states
# Longer than the retransmission timeouts of a peer that is alive (200 ms minimum, doubling), shorter than
# the 10 s that docker-compose and Kubernetes' default grace leave before SIGKILL.
DELIVERY_WAIT_S = 3.0


def unacknowledged(ports: Iterable[int], tables: Iterable[Path] = TCP_TABLES) -> int:
    """Bytes queued in the kernel and not yet acknowledged, over the connections on these local ports."""
    wanted = {f"{port:04X}" for port in ports}
    total = 0
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:  # no IPv6 in this kernel, or no /proc: nothing to wait for there
            continue
        for line in lines:
            fields = line.split()
            local, state, queues = fields[1], fields[3], fields[4]
            if local.rsplit(":", 1)[1] in wanted and state != _LISTEN:
                total += int(queues.split(":")[0], 16)  # tx_queue
    return total


def await_delivery(ports: Iterable[int], limit_s: float = DELIVERY_WAIT_S, poll_s: float = 0.01) -> int:
    """Wait up to limit_s for unacknowledged() to reach 0; return the bytes still queued (0: all delivered)."""
    ports = [port for port in ports if port]
    started = time.monotonic()
    queued = unacknowledged(ports)
    if not queued:
        return 0
    while queued and time.monotonic() - started < limit_s:
        time.sleep(poll_s)
        queued = unacknowledged(ports)
    waited_ms = (time.monotonic() - started) * 1000
    if queued:
        log.warning("exiting with %d bytes of answers not yet acknowledged by their clients after %.0f ms", queued, waited_ms)
    else:
        log.info("waited %.0f ms until the kernel had delivered the last answers", waited_ms)
    return queued
