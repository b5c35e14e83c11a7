"""benchmarks/image_classify.py runs end to end in its short mode and prints every row of its table.

It serves a 1080p JPEG (elu-cifar11) and a 28x28 PNG (fashion-cnn) with elunet and LitServe, checks that each
answers the probabilities of the decode and ONNX Runtime run in the benchmark, loads each with wrk, and measures
both decodes without a server. Only that it runs and reports is tested: its figures are timings (the docs'
Benchmarks pages show measured ones). LitServe is installed into the peers' virtual environment the first time;
without PyPI that cannot happen and the test skips, saying so.
"""

from __future__ import annotations

import re

import pytest
from test_serve_peers_benchmark import run_short_mode  # puts benchmarks/ on the path
from image_classify import CASES, DECODES  # noqa: I001

pytestmark = pytest.mark.slow

SERVED = re.compile(r"^  (?P<name>elunet serve|LitServe [\d.]+, [12] worker\(s\))\s+(?P<rate>[\d.]+)\s+(?P<p50>[\d.]+)\s+(?P<p99>[\d.]+)\s+(?P<errors>\d+)$")
CEILING = re.compile(r"^  ceiling, (?P<decode>.+?)\s+(?P<rate>[\d.]+)$")
RATIOS = re.compile(r"served / ceiling = [\d.]+; served / peer \(LitServe .+\) = [\d.]+; draft / full ceiling = [\d.]+")


def test_short_mode_prints_every_row_for_both_images():
    done = run_short_mode("image_classify.py")
    sections = re.split(r"^(?=\S+, .+:$)", done.stdout, flags=re.M)[1:]
    assert [s.split(",")[0] for s in sections] == list(CASES), done.stdout
    for architecture, section in zip(CASES, sections):
        lines = section.splitlines()
        served = {re.sub(r" [\d.]+,", "", m["name"]): m for m in map(SERVED.match, lines) if m}  # LitServe's version left out
        assert set(served) == {"elunet serve", "LitServe 1 worker(s)", "LitServe 2 worker(s)"}, section
        assert all(float(m["rate"]) > 0 and int(m["errors"]) == 0 for m in served.values()), section
        ceilings = {m["decode"]: float(m["rate"]) for m in map(CEILING.match, lines) if m}
        assert set(ceilings) == set(DECODES.values()) and all(rate > 0 for rate in ceilings.values()), section
        assert RATIOS.search(section), section
    assert "targets: >= 120 images/s:" in sections[0]
