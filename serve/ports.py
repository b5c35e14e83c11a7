"""Whether the ports `elunet serve` listens on are free, checked before any model is loaded.

uvicorn binds only after the lifespan has loaded and warmed up every model, so a taken port was
reported minutes later, as a log record, with exit code 3. Binding a probe socket first turns it
into one plain error line and exit code 2 at start-up.
"""

from __future__ import annotations

import socket

from elunet.errors import ElunetError
from elunet.serve.settings import ServeSettings, env_name, option_name

PORT_FIELDS = ("port", "grpc_port")  # grpc_port 0: no gRPC


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
