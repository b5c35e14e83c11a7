"""Run the app under uvicorn, with a graceful SIGTERM.

On SIGTERM/SIGINT uvicorn stops listening and waits for the requests it has
already accepted; the batchers keep computing until every one of them is
answered, then the lifespan closes the backends. Readiness reports 503 from
the first signal on, so a load balancer stops sending traffic, and gRPC stops
taking new calls. Last, the process waits until the kernel has delivered those
answers (delivery.py), and exits 0 when every request was answered.

Only uvicorn's documented programmatic API is used (``Config``, ``Server.serve``,
``should_exit``). The bounds uvicorn does not offer (header time, a stalled
reader) are the edge's: deploy/nginx.conf.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvicorn

from elunet.serve.app import create_app
from elunet.serve.delivery import await_delivery
from elunet.serve.logs import configure_logging
from elunet.serve.ports import check_ports_free
from elunet.serve.protocol import TRITON_DIFFERENCES
from elunet.serve.settings import ServeSettings

log = logging.getLogger("elunet.serve")
# After the request timeout every accepted request has an answer (maybe 504); this is slack on top.
DRAIN_SLACK_S = 5.0
# How soon after a signal readiness turns 503 and gRPC stops taking calls.
SIGNAL_WATCH_S = 0.02
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def serve(settings: ServeSettings) -> None:
    check_ports_free(settings)
    configure_logging(settings.log_level)
    app = create_app(settings)
    ops = app.state.operations
    log.info(
        "serving %s on http://%s:%d (backend %s, device %s; model folders without config.pbtxt: max batch %d, "
        "delay %g ms, queue %d, instances %s)",
        settings.repository, settings.host, settings.port, settings.backend, settings.device or "auto",
        settings.max_batch_size, settings.max_queue_delay_ms, settings.max_queue_size, settings.instances or "chosen per model at warm-up",
    )
    for difference in TRITON_DIFFERENCES:
        log.info("differs from Triton: %s", difference)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        access_log=False,  # the AccessLog middleware writes structured lines instead
        # X-Forwarded-For is not read (as Triton does not): the access log names the peer that connected.
        proxy_headers=False,
        log_config=None,
        http="httptools",
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=settings.request_timeout_s + DRAIN_SLACK_S,
        limit_concurrency=settings.max_connections,
        # Allow many simultaneous keep-alive clients without FD trouble on small hosts.
        backlog=2048,
        loop=settings.event_loop,
    )
    server = uvicorn.Server(config)
    received: list[int] = []

    def stop(sig, frame) -> None:
        # Before uvicorn takes the signals over (start-up), and after it gives them back: uvicorn raises the
        # signal it caught again once it has stopped, and the exit status is decided below instead.
        received.append(sig)
        server.should_exit = True

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)

    ports: set[int] = set()

    async def run() -> None:
        watch = asyncio.create_task(_drain_on_exit(server, app, ports))
        try:
            await server.serve()
        finally:
            watch.cancel()

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(run())
    await_delivery([*ports, settings.grpc_port])
    if received and ops.cancelled_requests:
        log.warning("%d request(s) were cancelled at shutdown, past the grace period", ops.cancelled_requests)
        sys.exit(128 + received[-1])


async def _drain_on_exit(server: uvicorn.Server, app, ports: set[int]) -> None:
    """Notes the ports bound (port 0 picks a free one); from the first signal on: readiness 503, new request
    bodies refused, gRPC taking no new calls."""
    while not server.should_exit:
        if server.started and not ports:
            ports.update(sock.getsockname()[1] for listener in server.servers for sock in listener.sockets)
        await asyncio.sleep(SIGNAL_WATCH_S)
    app.state.operations.draining = True
    log.info("stopping: no new connections; answering the requests already accepted")
    if app.state.grpc is not None:
        await app.state.grpc.stop(app.state.operations.settings.request_timeout_s)
