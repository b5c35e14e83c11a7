"""The Compose deployment's nginx edge bounds what uvicorn does not: slow, silent and greedy clients.

deploy/nginx.conf itself runs here, in front of a real server on loopback: only its upstream, its port and
its pid file are rewritten, and its header timeout is shortened so that the tests take seconds.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from fixtures_serve import free_port, http

pytestmark = pytest.mark.slow

CONF = Path(__file__).resolve().parents[1] / "deploy" / "nginx.conf"
HEADER_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def edge(start_server, synthetic_repository, tmp_path_factory):
    """(nginx's URL, its port) in front of a real server."""
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed (apt-get install nginx): the edge is nginx")
    server = start_server(synthetic_repository, allow_unverified=True)
    folder = tmp_path_factory.mktemp("edge")
    port = free_port()
    conf = CONF.read_text()
    for pattern, replacement in (
        (r"listen 8080;", f"listen 127.0.0.1:{port};"),
        (r"set \$elunet_replicas replica:8000;", f"set $elunet_replicas 127.0.0.1:{server.port};"),
        (r"pid /tmp/nginx.pid;", f"pid {folder}/nginx.pid;"),
        (r"client_header_timeout 10s;", f"client_header_timeout {HEADER_TIMEOUT_S}s;"),
    ):
        conf, found = re.subn(pattern, replacement, conf)
        assert found == 1, f"deploy/nginx.conf no longer has {pattern!r}: update this test with it"
    (folder / "nginx.conf").write_text(conf)
    proc = subprocess.Popen(["nginx", "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            if http("GET", url + "/v2/health/ready", timeout=1)[0] == 200:
                break
        except OSError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode() if proc.poll() is not None else "nginx did not answer"
        time.sleep(0.1)
    yield url, port
    proc.terminate()
    proc.wait(10)


def closed_after(port: int, send, wait_s: float = 10) -> tuple[bytes, float]:
    """Open a connection, ``send(sock)``, and read until it is closed: (what came, seconds from opening)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as s:
        t0 = time.monotonic()
        send(s)
        received = b""
        try:
            while chunk := s.recv(65536):
                received += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return received, time.monotonic() - t0


def test_requests_pass_the_edge(edge):
    url, _ = edge
    status, _, body = http("GET", url + "/v2")
    assert status == 200 and b"elunet" in body


def test_a_silent_connection_and_a_lone_crlf_are_closed_within_the_header_timeout(edge):
    _, port = edge
    for send in (lambda s: None, lambda s: s.sendall(b"\r\n")):
        received, seconds = closed_after(port, send)
        assert received in (b"", ) or received.startswith(b"HTTP/1.1 408"), received[:200]
        assert seconds < HEADER_TIMEOUT_S + 2, f"closed after {seconds:.1f} s"


def test_dribbled_headers_are_cut_off_and_other_clients_served_meanwhile(edge):
    url, port = edge

    def dribble(s):
        for byte in b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                return
            assert http("GET", url + "/v2/health/live", timeout=2)[0] == 200
            time.sleep(0.1)

    received, seconds = closed_after(port, dribble)
    assert not received.startswith(b"HTTP/1.1 200"), received[:200]
    assert seconds < HEADER_TIMEOUT_S + 2, f"a header dribbled a byte at a time held the connection for {seconds:.1f} s"


def test_headers_over_the_buffers_are_refused_and_never_reach_the_server(edge):
    url, port = edge
    received, _ = closed_after(port, lambda s: s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"))
    assert received.startswith(b"HTTP/1.1 400") or received == b"", received[:200]
    assert http("GET", url + "/v2/health/live")[0] == 200


def test_connections_beyond_the_per_client_limit_get_503(edge):
    url, port = edge
    limit = int(re.search(r"limit_conn per_client (\d+);", CONF.read_text()).group(1))
    held = []
    try:
        # limit_conn counts connections with a request under way at the server: hold them with bodies still due.
        for _ in range(limit):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
            held.append(s)
        time.sleep(0.5)
        assert http("GET", url + "/v2/health/live", timeout=5)[0] == 503
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)
    assert http("GET", url + "/v2/health/live")[0] == 200
