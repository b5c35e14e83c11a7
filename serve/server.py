"""Run the app under uvicorn, with a graceful SIGTERM.

On SIGTERM/SIGINT uvicorn stops listening and waits for the requests it has
already accepted; the batchers keep computing until every one of them is
answered, then the lifespan closes the backends. Readiness reports 503 from
the first signal on, so a load balancer stops sending traffic. Last, the
process waits until the kernel has delivered those answers (delivery.py).
"""

from __future__ import annotations

import contextlib
import logging

import uvicorn

from elunet.serve.app import create_app
from elunet.serve.connections import bounded_protocol
from elunet.serve.delivery import await_delivery
from elunet.serve.logs import configure_logging
from elunet.serve.ports import check_ports_free
from elunet.serve.settings import ServeSettings

log = logging.getLogger("elunet.serve")
# After the request timeout every accepted request has an answer (maybe 504); this is slack on top.
DRAIN_SLACK_S = 5.0


class _DrainingServer(uvicorn.Server):
    drained = False
    ports: frozenset[int] = frozenset()

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        # The bound ports, not the configured ones: port 0 picks a free one.
        self.ports = frozenset(sock.getsockname()[1] for server in self.servers for sock in server.sockets)

    async def _wait_tasks_to_complete(self) -> None:
        await super()._wait_tasks_to_complete()
        self.drained = True  # not reached when the grace period ran out and uvicorn cancelled requests

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            yield
            # uvicorn raises the captured signal again once it has stopped, so the process would end with
            # 143 (128 + SIGTERM). A shutdown that answered every request is the expected way to stop: exit 0.
            # One that had to cancel requests keeps the signal's exit status.
            if self.drained:
                self._captured_signals.clear()

    def handle_exit(self, sig, frame) -> None:
        self.config.app.state.draining = True
        self.config.app.state.stop_grpc()
        log.info("signal %s: no new connections; answering the requests already accepted", sig)
        super().handle_exit(sig, frame)


def serve(settings: ServeSettings) -> None:
    check_ports_free(settings)
    configure_logging(settings.log_level)
    app = create_app(settings)
    log.info(
        "serving %s on http://%s:%d (backend %s, device %s; defaults for what config.pbtxt leaves unset: max batch %d, "
        "delay %g ms, queue %d, instances %s)",
        settings.repository, settings.host, settings.port, settings.backend, settings.device or "auto",
        settings.max_batch_size, settings.max_queue_delay_ms, settings.max_queue_size, settings.instances or "chosen per model at warm-up",
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        access_log=False,  # the AccessLog middleware writes structured lines instead
        log_config=None,
        http=bounded_protocol(
            header_timeout_s=settings.header_timeout_s, write_timeout_s=settings.body_timeout_s, max_connections=settings.max_connections,
            fast_path=app.fast_path,
        ),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=settings.request_timeout_s + DRAIN_SLACK_S,
        # Allow many simultaneous keep-alive clients without FD trouble on small hosts.
        backlog=2048,
        loop=settings.event_loop,
    )
    server = _DrainingServer(config)
    server.run()
    await_delivery([*server.ports, settings.grpc_port])
