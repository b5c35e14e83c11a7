"""Triton's own load generator, perf_analyzer (tritonclient 2.41's binary, scripts/perf_analyzer.py), against a
real `elunet serve`: every mode, with perf_analyzer's default input (random bytes, so NaN and Inf occur).

Each run is short (measurement windows of 300 ms, at most 10 of them per load level) and bounded in time. What
must hold: perf_analyzer exits 0, no request failed at the server, and the server-side counts perf_analyzer
printed agree with elunet's own statistics over the run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_serve import LINEAR

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "perf_analyzer.py"
sys.path.insert(0, str(SCRIPT.parent))
import perf_analyzer  # noqa: E402

# Short windows, stability loose enough for a shared 2-core machine: the runs check behaviour, not speed.
WINDOWS = ["-p", "300", "--max-trials", "10", "-s", "100"]
# What perf_analyzer 2.41 aborts with when a window's server-side statistics do not add up: issue 28's
# statistics-consistency part (another engineer's), not this file's. Runs that hit it are marked xfail.
STATISTICS_ABORT = "Server side statistics compute counts must be the same"
# Requests an aborting perf_analyzer may leave in flight, cancelled at the server (counted failed): its
# concurrency (at most 4 here) or, at a request rate, the few sent within a request's latency.
CUT_OFF = 8
# Mode -> perf_analyzer's options besides the model, the server and the windows; {http} and {grpc} are the ports.
MODES = {
    "http-sync-binary": ["-i", "http"],
    "http-sync-json": ["-i", "http", "--input-tensor-format", "json", "--output-tensor-format", "json"],
    "http-async": ["-i", "http", "-a", "--concurrency-range", "4"],
    "http-batch-2": ["-i", "http", "-b", "2"],
    "http-request-rate": ["-i", "http", "--request-rate-range", "40:80:40"],
    "http-shared-memory": ["-i", "http", "--shared-memory", "system"],
    "grpc-sync": ["-i", "grpc"],
    "grpc-async": ["-i", "grpc", "-a", "--concurrency-range", "4"],
    "grpc-streaming": ["-i", "grpc", "--streaming", "--concurrency-range", "2"],
    "grpc-batch-2": ["-i", "grpc", "-b", "2"],
    "grpc-request-rate": ["-i", "grpc", "--request-rate-range", "40:80:40"],
    "grpc-shared-memory": ["-i", "grpc", "--shared-memory", "system"],
}


@pytest.fixture(scope="module")
def perf_analyzer_installed():
    try:
        return perf_analyzer.install()
    except perf_analyzer.Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def server(start_server, synthetic_repository):
    return start_server(synthetic_repository, allow_unverified=True, max_batch_size=8)


def success_and_inference_counts(server) -> tuple[int, int, int]:
    """(successful requests, images inferred, failed requests) of the model so far, from elunet's statistics."""
    status, stats = server.get_json(f"/v2/models/{LINEAR}/stats")
    assert status == 200, stats
    version = stats["model_stats"][0]
    inference = version["inference_stats"]
    return inference["success"]["count"], version["inference_count"], inference["fail"]["count"]


def last_figure(output: str, name: str) -> int:
    """The last value perf_analyzer printed for ``name`` (e.g. "Successful request count")."""
    found = re.findall(rf"{name}: (\d+)", output)
    assert found, f"perf_analyzer printed no {name!r}:\n{output}"
    return int(found[-1])


@pytest.mark.parametrize("mode", MODES)
def test_perf_analyzer_runs_every_mode_with_its_default_input(perf_analyzer_installed, server, mode):
    url = server.url.removeprefix("http://") if MODES[mode][1] == "http" else server.grpc_url
    batch = int(MODES[mode][MODES[mode].index("-b") + 1]) if "-b" in MODES[mode] else 1
    before = success_and_inference_counts(server)
    run = subprocess.run([sys.executable, str(SCRIPT), "--", "-m", LINEAR, "-u", url, *MODES[mode], *WINDOWS],
                         capture_output=True, text=True, timeout=180)
    output = run.stdout + run.stderr
    print(output)
    succeeded, inferred, failed = (after - earlier for after, earlier in zip(success_and_inference_counts(server), before))
    assert succeeded > 0 and inferred == batch * succeeded, "each request carries -b images"
    # Random input holds NaN and Inf in about a fifth of these 64-pixel images: refused, they would fail by the hundred.
    if STATISTICS_ABORT in output:
        assert failed <= CUT_OFF, f"{failed} requests failed at the server, more than an aborted client leaves in flight"
        pytest.xfail(f"perf_analyzer aborted on its statistics check ({STATISTICS_ABORT!r}) after {succeeded} requests answered "
                     f"({failed} cut off): issue 28's statistics consistency")
    assert run.returncode == 0, output
    assert failed == 0, f"{failed} requests failed at the server"
    # perf_analyzer's server-side figures are elunet's statistics over its measurement windows, a part of the run.
    server_success = last_figure(output, "Successful request count")
    assert 0 < server_success <= succeeded
    assert last_figure(output, "Inference count") == batch * server_success
    assert last_figure(output, "Execution count") <= last_figure(output, "Inference count")
    client_count = int(re.findall(r"Request count: (\d+)", output)[-1])
    assert 0 < client_count <= succeeded, "every request perf_analyzer counted was counted by the server"


GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "perf-analyzer-and-shared-memory.md"


def test_the_guide_shows_exactly_these_runs_and_exit_codes():
    shown = [line for line in GUIDE.read_text().splitlines() if line.startswith("python scripts/perf_analyzer.py -- ")]
    ports = {"http": "127.0.0.1:8000", "grpc": "127.0.0.1:8001"}
    runs = [" ".join(["python scripts/perf_analyzer.py --", "-m", LINEAR, "-u", ports[options[1]], *options, *WINDOWS]) for options in MODES.values()]
    assert shown == runs
    assert f"exit codes: {perf_analyzer.UNREACHABLE} when PyPI" in GUIDE.read_text().replace("\n", " ")
    assert f"{perf_analyzer.MISSING_LIBRARY} when a system library" in GUIDE.read_text().replace("\n", " ")
    assert f"`{perf_analyzer.TRITONCLIENT}`" in GUIDE.read_text()
