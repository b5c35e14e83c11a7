"""Whether the ports `elunet serve` listens on are free, checked before any model is loaded.

uvicorn binds its port only after the lifespan has started, and the models begin to load in the
background there. A port it cannot bind then ends the server through the lifespan's shutdown, which
waits for those loads: the taken port is reported late, as a log record, with exit code 3. Binding
a probe socket first turns it into one plain error line and exit code 2 at start-up, before any load.
"""

from __future__ import annotations

import socket

from elunet.errors import ElunetError
from elunet.serve.settings import ServeSettings, env_name, option_name

PORT_FIELDS = ("port", "grpc_port", "metrics_port")  # grpc_port, metrics_port 0: none


def check_ports_free(settings: ServeSettings) -> None:
    for field in PORT_FIELDS:
        port = getattr(settings, field)
        if not port:
            continue
        try:
            family, kind, proto, _, address = socket.getaddrinfo(settings.host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port left in TIME_WAIT is free
                probe.bind(address)
        except OSError as exc:
            option = option_name(field)
            raise ElunetError(
                f"cannot listen on {settings.host}:{port} ({option}): {exc.strerror or exc}",
                hint=f"another program (another elunet serve?) uses it: stop it, or choose a free port with {option} N (env {env_name(field)})",
            ) from None
