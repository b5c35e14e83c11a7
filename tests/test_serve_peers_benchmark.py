"""benchmarks/serve_peers.py runs end to end in its short mode and prints every row of its table.

It serves one model with MLServer, LitServe and elunet (JSON, binary, gRPC), checks each answers ONNX
Runtime's logits, loads each with wrk, and measures ONNX Runtime alone. Only that it runs and reports is
tested here: its figures are timings (see the docs' Benchmarks pages for measured ones). MLServer and LitServe are
installed into a virtual environment of their own the first time; without PyPI that cannot happen and
the test skips, saying so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from serve_peers import NO_PEERS  # noqa: E402

SERVER_ROWS = ("MLServer", "LitServe", "elunet JSON", "elunet binary", "elunet gRPC")
# name, requests/s, p50, p99, errors, ratio to MLServer
ROW = re.compile(r"^\s+(?P<name>.+?)\s{2,}(?P<rps>\d+)\s+(?P<p50>[\d.]+)\s+(?P<p99>[\d.]+)\s+(?P<errors>\d+)\s+(?P<ratio>[\d.]+)$")
RAW_ROW = re.compile(r"^\s+raw ONNX Runtime, batch (?P<batch>\d+) \(img/s\)\s+(?P<rate>\d+)$")


def run_short_mode(script: str) -> subprocess.CompletedProcess:
    """``benchmarks/SCRIPT --short``, which must succeed; skipped without wrk, or where the peers cannot be installed."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk)")
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--short"], capture_output=True, text=True, timeout=1500)
    if done.returncode == NO_PEERS:
        pytest.skip(f"the peer servers could not be installed: {done.stderr.strip()[-500:]}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_short_mode_prints_every_row():
    done = run_short_mode("serve_peers.py")
    lines = done.stdout.splitlines()
    servers = {m["name"]: m for m in map(ROW.match, lines) if m}
    for name in SERVER_ROWS:
        row = next((m for n, m in servers.items() if n.startswith(name)), None)
        assert row is not None, f"no {name} row in:\n{done.stdout}"
        assert float(row["rps"]) > 0 and int(row["errors"]) == 0, row.group(0)
    raw = [m for m in map(RAW_ROW.match, lines) if m]
    formed = re.search(r"batches of (\d+)(?: and \d+)* formed", done.stdout)
    assert formed and [m["batch"] for m in raw] == ["1", formed.group(1)], done.stdout
    assert all(float(m["rate"]) > 0 for m in raw)
    assert re.search(r"elunet JSON / MLServer = [\d.]+ at p99", done.stdout) and "elunet JSON / raw ONNX Runtime at batch" in done.stdout
