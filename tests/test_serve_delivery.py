"""The exit wait for undelivered answers, on real loopback sockets whose client stops reading."""

from __future__ import annotations

import logging
import socket
import sys
import threading

import pytest

from elunet.serve.delivery import await_delivery, unacknowledged

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads Linux's /proc/net/tcp")


@pytest.fixture
def stalled():
    """(server port, server side, client side) with the server's answer stuck in the kernel: the client does not read."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small, so the server's queue fills quickly
    client.connect(("127.0.0.1", port))
    server, _ = listener.accept()
    server.setblocking(False)
    sent = 0
    try:
        while True:
            sent += server.send(b"x" * 65536)
    except BlockingIOError:
        pass
    yield port, server, client, sent
    for sock in (client, server, listener):
        sock.close()


def test_a_listening_port_alone_has_nothing_in_flight():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        assert unacknowledged([listener.getsockname()[1]]) == 0
        assert await_delivery([listener.getsockname()[1]], limit_s=0.01) == 0


def test_bytes_a_client_has_not_read_count_until_it_reads_them(stalled, caplog):
    port, server, client, sent = stalled
    queued = unacknowledged([port])
    assert 0 < queued <= sent
    assert unacknowledged([port + 1 if port < 65535 else port - 1]) == 0  # other ports are not counted

    server.close()  # as the server does after answering: the bytes stay with the kernel
    with caplog.at_level(logging.INFO, logger="elunet.serve"):
        assert await_delivery([port], limit_s=0.05) > 0
    assert "not yet acknowledged" in caplog.text

    received = 0

    def read_all():
        nonlocal received
        while chunk := client.recv(1 << 16):
            received += len(chunk)

    reader = threading.Thread(target=read_all)
    reader.start()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="elunet.serve"):
        assert await_delivery([port], limit_s=10) == 0
    reader.join(10)
    assert received == sent  # all of it arrived, after the server had closed its side
    assert "until the kernel had delivered the last answers" in caplog.text
