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
