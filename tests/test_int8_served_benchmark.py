"""benchmarks/int8_served.py runs end to end in its short mode: both dtypes served, checked and loaded.

It exports a fresh fashion-cnn as fp32 and int8, serves both from one `elunet serve`, checks each answers
its ONNX file's logits, loads each with wrk, and measures ONNX Runtime alone. Only that it runs and
reports is tested: its figures are timings (docs/benchmarks/history.md has measured ones).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "int8_served.py"
# dtype protocol, requests/s, p50, p99, ratio to fp32
ROW = re.compile(r"^\s+(?P<dtype>fp32|int8) (?P<protocol>JSON|binary)\s+(?P<rps>\d+)\s+(?P<p50>[\d.]+)\s+(?P<p99>[\d.]+)\s+(?P<ratio>[\d.]+)$")


def test_short_mode_serves_both_dtypes_and_prints_every_row():
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk)")
    done = subprocess.run([sys.executable, str(BENCHMARK), "--short"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {(m["dtype"], m["protocol"]): m for m in map(ROW.match, done.stdout.splitlines()) if m}
    assert set(rows) == {(d, p) for d in ("fp32", "int8") for p in ("JSON", "binary")}, done.stdout
    assert all(float(m["rps"]) > 0 for m in rows.values())
    assert rows["fp32", "JSON"]["ratio"] == "1.00"
    raw = re.findall(r"raw ONNX Runtime (fp32|int8), batch \d+ \(img/s\): (\d+)", done.stdout)
    assert [d for d, _ in raw] == ["fp32", "int8"] and all(int(r) > 0 for _, r in raw), done.stdout
    assert re.search(r"served int8/fp32 \(JSON\) = [\d.]+; raw int8/fp32 = [\d.]+ \(target >= 1.3\)", done.stdout), done.stdout
