"""Triton's metrics, natively: the nv_inference_* families on /metrics and the metrics port, equal to the statistics
extension; statistics consistent at every instant under load; Triton's Grafana dashboard queries evaluated by a real
Prometheus scraping a real server, with no recording rules.

Real `elunet serve` processes on the synthetic repository, real tritonclient, real Prometheus (Debian's package).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import yaml
from fixtures_serve import INPUT_NAME, LINEAR, SYNTHETIC_SHAPE, binary_infer_body, free_ports, http

pytestmark = pytest.mark.slow

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "triton-metrics-and-config.md"

SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")
COUNTS = ("success", "queue", "compute_input", "compute_infer", "compute_output")

# Triton's k8s-onprem Grafana dashboard (triton-inference-server/server, deploy/k8s-onprem/dashboard.json), every
# panel's expression, and what Triton's metrics documentation derives from its families (average batch size); `pod`
# is the label Kubernetes' service discovery adds, here a static label of the scrape job.
DASHBOARD_QUERIES = (
    "count(count(nv_inference_count) by (instance))",
    "sum by (pod) (rate(nv_inference_count[1m])) / ignoring(pod) group_left sum (rate(nv_inference_count[1m]))",
    "sum(nv_inference_request_success) by (pod)",
    "sum(nv_inference_request_failure) by (pod)",
    "sum(rate(nv_inference_compute_infer_duration_us[30s])) by (model) / 1000",
    "avg(rate(nv_inference_queue_duration_us[30s])/(1+rate(nv_inference_request_success[30s]))) by (pod)",
    "sum(rate(nv_inference_count[1m])) by (model) / sum(rate(nv_inference_exec_count[1m])) by (model)",
    "sum(nv_inference_pending_request_count) by (model)",
    "rate(nv_inference_compute_input_duration_us[1m]) + rate(nv_inference_compute_output_duration_us[1m])",
    "rate(nv_inference_request_duration_us[1m])",
    "nv_cpu_utilization",
    "nv_cpu_memory_used_bytes / nv_cpu_memory_total_bytes",
    # The cloud dashboards' (TensorRT Inference Server's names)
    "sum(rate(nv_inference_compute_duration_us[1m])) by (model)",
    "histogram_quantile(0.9, sum(rate(nv_inference_load_ratio_bucket[1m])) by (le, model))",
)


def guide_block(language: str) -> str:
    (block,) = re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), flags=re.S)
    return block


def test_the_guide_shows_the_queries_and_the_prometheus_configuration_these_tests_run():
    assert tuple(guide_block("promql").splitlines()) == DASHBOARD_QUERIES
    (job,) = yaml.safe_load(guide_block("yaml"))["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8002"], "Triton's metrics port, elunet's default"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(family, labels) -> value of every sample of a Prometheus text exposition."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            m = SAMPLE.match(line)
            assert m, f"not a Prometheus sample: {line!r}"
            labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m["labels"] or ""))
            found[m["name"], labels] = float(m["value"])
    return found


def version_labels(**more) -> frozenset:
    return frozenset({("model", LINEAR), ("version", "1"), *more.items()})


def infer(url: str, n: int) -> int:
    body, headers = binary_infer_body(np.random.default_rng(n).random((n, *SYNTHETIC_SHAPE), dtype=np.float32))
    return http("POST", f"{url}/v2/models/{LINEAR}/infer", body, headers)[0]


def grpc_infer(client, n: int) -> None:
    tensor = tgrpc.InferInput(INPUT_NAME, [n, *SYNTHETIC_SHAPE], "FP32")
    tensor.set_data_from_numpy(np.zeros((n, *SYNTHETIC_SHAPE), np.float32))
    client.infer(LINEAR, [tensor])


@pytest.fixture(scope="module")
def metrics_server(start_server, synthetic_repository):
    metrics_port = free_ports(1)[0]
    return start_server(synthetic_repository, max_batch_size=8, max_queue_delay_ms=1, allow_unverified=True, metrics_port=metrics_port)


def test_triton_families_on_both_ports_equal_the_statistics_extension(metrics_server):
    server = metrics_server
    client = tgrpc.InferenceServerClient(server.grpc_url)
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(lambda k: infer(server.url, 1 + k % 3), range(24))) == {200}
    grpc_infer(client, 2)
    wrong, headers = binary_infer_body(np.zeros((1, 2, 2, 2), np.float32))
    assert http("POST", f"{server.url}/v2/models/{LINEAR}/infer", wrong, headers)[0] == 400  # a failure: reason OTHER

    stats = json.loads(http("GET", f"{server.url}/v2/models/{LINEAR}/versions/1/stats")[2])["model_stats"][0]
    on_http = http("GET", server.url + "/metrics")
    on_port = http("GET", f"http://127.0.0.1:{server.metrics_port}/metrics")
    assert on_http[0] == on_port[0] == 200
    assert on_port[1]["Content-Type"].startswith("text/plain; version=0.0.4")
    for text in (on_http[2].decode(), on_port[2].decode()):
        for family, kind in (("nv_inference_request_success", "counter"), ("nv_inference_request_failure", "counter"),
                             ("nv_inference_queue_duration_us", "counter"), ("nv_inference_pending_request_count", "gauge"),
                             ("nv_cpu_utilization", "gauge")):
            assert f"# TYPE {family} {kind}\n" in text, family
        m = samples(text)
        inference = stats["inference_stats"]
        us = {field: inference[field]["ns"] // 1000 for field in COUNTS}
        expected = {
            "nv_inference_request_success": inference["success"]["count"],
            "nv_inference_count": stats["inference_count"],
            "nv_inference_exec_count": stats["execution_count"],
            "nv_inference_request_duration_us": us["success"],
            "nv_inference_queue_duration_us": us["queue"],
            "nv_inference_compute_input_duration_us": us["compute_input"],
            "nv_inference_compute_infer_duration_us": us["compute_infer"],
            "nv_inference_compute_output_duration_us": us["compute_output"],
            "nv_inference_compute_duration_us": us["compute_input"] + us["compute_infer"] + us["compute_output"],
            "nv_inference_pending_request_count": 0,
        }
        assert {name: m[name, version_labels()] for name in expected} == expected
        assert expected["nv_inference_request_success"] == 25 and expected["nv_inference_count"] == 2 + sum(1 + k % 3 for k in range(24))
        assert all(value > 0 for name, value in expected.items() if name != "nv_inference_pending_request_count"), expected
        failures = {reason: m["nv_inference_request_failure", version_labels(reason=reason)] for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER")}
        assert failures == {"REJECTED": 0, "CANCELED": 0, "BACKEND": 0, "OTHER": 1} == {"OTHER": inference["fail"]["count"], **failures}
        assert m["nv_inference_load_ratio_count", version_labels()] == 25
        assert 0 < m["nv_cpu_memory_used_bytes", frozenset()] < m["nv_cpu_memory_total_bytes", frozenset()]
        assert 0 <= m["nv_cpu_utilization", frozenset()] <= 1
        assert m["process_resident_memory_bytes", frozenset()] > 0
        assert not [name for name, _ in m if name.startswith("elunet_inference_") and not name.startswith(
            ("elunet_inference_batch_size", "elunet_inference_scheduling", "elunet_inference_instance_"))], \
            "elunet families only where Triton has none"
    assert http("GET", f"http://127.0.0.1:{server.metrics_port}/v2/health/ready")[0] == 404, "the metrics port serves /metrics alone"


def test_the_metrics_port_is_off_with_0_and_closes_with_the_server(start_server, synthetic_repository):
    import socket

    port = free_ports(1)[0]
    server = start_server(synthetic_repository, allow_unverified=True, metrics_port=port)
    assert http("GET", f"http://127.0.0.1:{port}/metrics")[0] == 200
    assert server.stop() == 0
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    off = start_server(synthetic_repository, allow_unverified=True, metrics_port=0)
    assert "metrics on http" not in off.log() and f"metrics on http://127.0.0.1:{port}" in server.log()


def test_statistics_are_consistent_at_every_instant_over_http_and_grpc(start_server, synthetic_repository):
    """perf_analyzer aborts when a read shows compute counts that differ: every read, taken while requests end on both
    transports, has success == queue == compute_input == compute_infer == compute_output counts."""
    server = start_server(synthetic_repository, max_batch_size=8, max_queue_delay_ms=1, allow_unverified=True)
    client = tgrpc.InferenceServerClient(server.grpc_url)
    done = threading.Event()
    reads: list[dict[str, int]] = []

    def read_http():
        while not done.is_set():
            stats = json.loads(http("GET", f"{server.url}/v2/models/{LINEAR}/stats")[2])["model_stats"][0]["inference_stats"]
            assert stats["cache_hit"] == {"count": 0, "ns": 0} and stats["cache_miss"] == {"count": 0, "ns": 0}
            reads.append({field: stats[field]["count"] for field in COUNTS})

    def read_grpc():
        reader = tgrpc.InferenceServerClient(server.grpc_url)
        while not done.is_set():
            stats = reader.get_inference_statistics(LINEAR).model_stats[0].inference_stats
            assert stats.HasField("cache_hit") and stats.cache_miss.count == 0
            reads.append({field: getattr(stats, field).count for field in COUNTS})

    def load(k: int):
        for i in range(30):
            if k == 0:
                grpc_infer(client, 1 + i % 4)
            else:
                assert infer(server.url, 1 + (i + k) % 4) == 200

    with ThreadPoolExecutor(7) as pool:
        readers = [pool.submit(read_http), pool.submit(read_grpc)]
        list(pool.map(load, range(5)))
        done.set()
        for reader in readers:
            reader.result()
    inconsistent = [r for r in reads if len(set(r.values())) != 1]
    assert not inconsistent, inconsistent[:5]
    assert len({r["success"] for r in reads}) > 10, "the reads saw the counts change"
    assert reads[-1]["success"] == 150


@pytest.fixture
def prometheus():
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian package prometheus; `make test` installs it)")
    return binary


def test_tritons_dashboard_queries_evaluate_against_a_live_elunet_without_rules(prometheus, metrics_server, tmp_path):
    server = metrics_server
    web = free_ports(1)[0]
    config = tmp_path / "prometheus.yml"
    settings = yaml.safe_load(guide_block("yaml"))  # the guide's configuration, scraping this test's server
    settings["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{server.metrics_port}"]
    assert "rule_files" not in settings
    config.write_text(yaml.safe_dump(settings))
    proc = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{web}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stop = threading.Event()

    def load():
        k = 0
        while not stop.is_set() and k < 2000:  # bounded: about 20 requests a second for at most the test's minute
            infer(server.url, 1 + k % 3)
            k += 1
            time.sleep(0.05)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        empty = list(DASHBOARD_QUERIES)
        deadline = time.monotonic() + 60
        while empty and time.monotonic() < deadline:
            time.sleep(1)
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            results = {q: query(web, q) for q in empty}
            empty = [q for q, result in results.items() if not result]
        assert not empty, f"no series for: {empty}"
        (share,) = query(web, DASHBOARD_QUERIES[1])
        assert share["metric"] == {"pod": "elunet-0"} and float(share["value"][1]) == 1.0, share
    finally:
        stop.set()
        loader.join()
        proc.terminate()
        proc.wait(30)


def query(port: int, expr: str) -> list:
    try:
        status, _, body = http("GET", f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout=5)
    except OSError:  # not listening yet
        return []
    if status != 200:  # not ready yet
        return []
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]
