"""scripts/demo.sh (`make demo`) as a newcomer runs it: a taken port is refused at once, before training."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_refuses_a_taken_port_before_it_trains(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "RUN": str(tmp_path / "run")}
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        demo = subprocess.Popen(["bash", "scripts/demo.sh"], cwd=REPO_ROOT, env={**env, "PORT": str(port)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, stderr = demo.communicate(timeout=60)  # the demo trains for minutes before it serves; refusing takes a second
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)  # bash and the training it started
            demo.wait()
            pytest.fail("the demo did not refuse the taken port: it was still running after 60 s")
    assert demo.returncode != 0
    assert stderr.strip() == f"demo: port {port} on 127.0.0.1 is taken (Address already in use): run it with PORT=<a free port>, or without PORT to use any free one"
    assert not (tmp_path / "run").exists()
