"""deploy/prometheus.yml: it parses, and it scrapes every elunet server container at the port and
path where the real server publishes its metrics."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from fixtures_deploy import DEPLOY_DIR, elunet_command, serve_default

PROMETHEUS_CONFIG = DEPLOY_DIR / "prometheus.yml"


def promtool_check(path) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_config():
    result = promtool_check(PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_config(tmp_path):
    """The check above can fail: a misspelt field is refused."""
    broken = tmp_path / "prometheus.yml"
    broken.write_text(PROMETHEUS_CONFIG.read_text().replace("metrics_path:", "metric_path:", 1))
    assert promtool_check(broken).returncode != 0


def test_prometheus_scrapes_every_server_at_its_metrics_route(compose, serve_routes):
    from elunet.serve.middleware import open_paths
    from elunet.serve.settings import ServeSettings

    open_by_default = open_paths(ServeSettings.model_fields["open_endpoints"].default)

    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "elunet")
    assert job["metrics_path"] in serve_routes
    assert job["metrics_path"] in open_by_default, "an API key would make scraping fail"
    (discovery,) = job["dns_sd_configs"]
    assert discovery["type"] == "A" and discovery["port"] == serve_default("port")
    servers = {
        name
        for name, service in compose["services"].items()
        if isinstance(service.get("command"), list) and service["command"][:1] == ["serve"]
    }
    assert elunet_command("serve") is not None
    assert set(discovery["names"]) == servers, "every serving service, and only those, is scraped"


def test_compose_runs_prometheus_with_this_config(compose):
    prometheus = compose["services"]["prometheus"]
    mounts = [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in prometheus["volumes"]]
    assert any(m.startswith(f"{PROMETHEUS_CONFIG}:/etc/prometheus/prometheus.yml") for m in mounts), mounts
    assert "profiles" not in prometheus, "monitoring starts with the default `docker-compose up`"
    triton = next(j for j in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"] if j["job_name"] == "triton")
    assert triton["dns_sd_configs"][0]["names"] == ["triton"]
    assert any(p["target"] == triton["dns_sd_configs"][0]["port"] for p in compose["services"]["triton"]["ports"])


TRITON_RULES = DEPLOY_DIR / "prometheus-triton-rules.yml"
TRITON_FAMILIES = {
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count", "nv_inference_exec_count",
    "nv_inference_request_duration_us", "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us", "nv_inference_pending_request_count",
}


def test_triton_families_are_recorded_with_triton_units():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    rules = yaml.safe_load(TRITON_RULES.read_text())
    assert {r["record"] for g in rules["groups"] for r in g["rules"]} == TRITON_FAMILIES
    assert "prometheus-triton-rules.yml" in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["rule_files"]
    unit = DEPLOY_DIR.parent / "tests" / "data" / "prometheus-triton-rules.test.yml"
    done = subprocess.run([promtool, "test", "rules", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_read_metrics_a_real_server_publishes(synthetic_server):
    import re

    import numpy as np
    from fixtures_serve import LINEAR, SYNTHETIC_SHAPE, binary_infer_body, http

    body, headers = binary_infer_body(np.zeros((1, *SYNTHETIC_SHAPE), np.float32))
    assert http("POST", f"{synthetic_server.url}/v2/models/{LINEAR}/infer", body, headers)[0] == 200
    wrong, headers = binary_infer_body(np.zeros((1, 2, 2, 2), np.float32))  # a failure, so that the failure counter exists
    assert http("POST", f"{synthetic_server.url}/v2/models/{LINEAR}/infer", wrong, headers)[0] == 400
    published = {line.split("{")[0].split(" ")[0] for line in http("GET", synthetic_server.url + "/metrics")[2].decode().splitlines()
                 if line and not line.startswith("#")}
    used = set(re.findall(r"elunet_inference_\w+", TRITON_RULES.read_text()))
    assert used and used <= published, used - published
