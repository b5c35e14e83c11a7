#!/usr/bin/env python3
"""Container health check for `elunet serve`: exit 0 when the server says it is ready.

Installed as ``elunet-healthcheck`` in the serve images and run by their
HEALTHCHECK and by docker-compose. It asks the KServe V2 readiness endpoint,
which answers 200 only once every model in the repository is loaded, on the
port the server listens on (``ELUNET_PORT``, else the settings default). The
health endpoints need no API key. Standard library only: no curl in the image.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from elunet.serve.settings import ServeSettings, env_name

READY_PATH = "/v2/health/ready"
# A server bound to every interface answers on loopback; one bound to a
# single address answers only there.
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def ready_url(environ: dict[str, str]) -> str:
    port = environ.get(env_name("port")) or ServeSettings.model_fields["port"].default
    host = environ.get(env_name("host"), "")
    host = "127.0.0.1" if host in WILDCARD_HOSTS else host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{READY_PATH}"


def main() -> int:
    url = ready_url(dict(os.environ))
    timeout_s = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"not ready: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"not ready: {url} answered HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
