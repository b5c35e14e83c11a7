"""`make deploy-check` (scripts/deploy_check.sh): the Compose deployment built and run for real, with podman.

The slow test runs the whole check: the serve image built from a local Debian base, the real
docker-compose.yml (profiles cpu and scale, nginx, Prometheus) run by Debian's docker-compose
against podman's API, a replica stopped under load, `down` under load. It skips only where podman
cannot run at all (the script exits 77 and says why: no root, no apt-get to install podman, or
podman cannot start a container). The fast tests pin what the check relies on in the deployment
files: the base images as build arguments, the override that swaps images only, the servers'
read-only root, the nginx stand-in's resolver rewrite.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixtures_deploy import DEPLOY_DIR, DOCKERFILE, REPO_ROOT, docker_compose, serve_default

SCRIPT = REPO_ROOT / "scripts" / "deploy_check.sh"
OVERRIDE = DEPLOY_DIR / "check" / "docker-compose.check.yml"
STANDINS = DEPLOY_DIR / "check" / "Containerfile"
SKIPPED = 77
# The production images, as they were before the bases became build arguments.
PRODUCTION_BASES = {
    "WHEEL_BASE": "python:3.12-slim-bookworm",
    "SERVE_BASE": "nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04",
    "TRT_IMAGE": "nvcr.io/nvidia/tensorrt:${NGC_RELEASE}-py3",
    "TRITON_IMAGE": "nvcr.io/nvidia/tritonserver:${NGC_RELEASE}-py3",
}


def dockerfile_args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S*)$", text, flags=re.M))


def test_every_base_image_is_a_build_argument_with_the_production_default():
    text = DOCKERFILE.read_text()
    args = dockerfile_args(text)
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.M))
    for base in re.findall(r"^FROM (\S+)", text, flags=re.M):
        if base in stages:
            continue
        match = re.fullmatch(r"\$\{(\w+)\}", base)
        assert match, f"FROM {base}: a base image must be a build argument (so a local base can replace it)"
        assert match.group(1) in args, base
    for name, default in PRODUCTION_BASES.items():
        assert args[name] == default, f"{name}: the production default changed"


def test_the_check_builds_the_serve_target_as_compose_builds_server_cpu(compose):
    script = SCRIPT.read_text()
    build = compose["services"]["server-cpu"]["build"]
    assert build["target"] == "serve" and build["args"]["ORT_PACKAGE"] == "onnxruntime"
    assert re.search(r'build elunet:serve-cpu .*-f "\$ROOT/Dockerfile" --target serve', script)
    assert "--build-arg ORT_PACKAGE=onnxruntime" in script
    assert compose["services"]["server-cpu"]["image"] == "elunet:serve-cpu"


def unordered_volumes(service: dict) -> dict:
    """Merging compose files may reorder a service's volumes; their order means nothing."""
    return {**service, "volumes": sorted(map(str, service.get("volumes", [])))}


def test_override_swaps_images_only(compose):
    """With deploy/check/docker-compose.check.yml on top, every service is docker-compose.yml's
    except for its image (and the CPU replicas' ELUNET_DEVICE, as server-cpu sets it)."""
    result = docker_compose("-f", str(OVERRIDE), "config")  # on top of docker-compose.yml
    assert result.returncode == 0, result.stderr
    checked = yaml.safe_load(result.stdout)["services"]
    overridden = yaml.safe_load(OVERRIDE.read_text())["services"]
    assert set(overridden) == {"replica", "lb", "prometheus"}
    for name, service in compose["services"].items():
        swapped = dict(checked[name])
        if name in overridden:
            assert swapped.pop("image") != service["image"]
            swapped["image"] = service["image"]
        if name == "replica":
            assert swapped["environment"]["ELUNET_DEVICE"] == compose["services"]["server-cpu"]["environment"]["ELUNET_DEVICE"] == "cpu"
            swapped["environment"] = {**swapped["environment"], "ELUNET_DEVICE": service["environment"]["ELUNET_DEVICE"]}
        assert unordered_volumes(swapped) == unordered_volumes(service), name
    assert checked["replica"]["image"] == compose["services"]["server-cpu"]["image"]
    for name in ("lb", "prometheus"):
        target = checked[name]["image"].split("/")[-1].split(":")[0]
        assert f"AS {target}" in STANDINS.read_text(), f"{name}: no stand-in target {target}"


def test_servers_run_on_a_read_only_root_with_a_tmpfs_tmp(compose):
    from elunet.serve.server import DRAIN_SLACK_S

    for name in ("server", "server-cpu", "server-trt", "replica"):
        service = compose["services"][name]
        assert service["read_only"] is True, name
        # The decoding pool's forkserver needs a writable temp dir (the server fails to start without one).
        assert "/tmp" in service["tmpfs"], name
        grace = float(service["stop_grace_period"].rstrip("s"))
        assert grace > serve_default("request_timeout_s") + DRAIN_SLACK_S, f"{name}: SIGKILL before the server's drain ends"


def test_nginx_standin_points_the_resolver_at_the_network_dns(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search dns.podman\nnameserver 10.89.0.1\nnameserver 192.0.2.53\n")
    copy = tmp_path / "nginx.conf"
    env = {"PATH": os.environ["PATH"], "RESOLV_CONF": str(resolv), "NGINX_CONF": str(DEPLOY_DIR / "nginx.conf"), "NGINX_CONF_COPY": str(copy)}
    result = subprocess.run(["sh", str(DEPLOY_DIR / "check" / "nginx-entrypoint.sh"), "echo"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["-c", str(copy)]
    original = (DEPLOY_DIR / "nginx.conf").read_text()
    assert copy.read_text() == original.replace("resolver 127.0.0.11 ", "resolver 10.89.0.1 ")
    assert copy.read_text() != original
    # Under Docker (127.0.0.11 in resolv.conf) the mounted file is used as it is.
    resolv.write_text("nameserver 127.0.0.11\n")
    result = subprocess.run(["sh", str(DEPLOY_DIR / "check" / "nginx-entrypoint.sh"), "echo"], env=env, capture_output=True, text=True, timeout=30)
    assert result.stdout.split() == ["-c", str(DEPLOY_DIR / "nginx.conf")]


def test_makefile_and_script_install_the_same_packages():
    makefile = (REPO_ROOT / "Makefile").read_text()
    listed = re.search(r"^DEPLOY_APT_PACKAGES := (.+)$", makefile, flags=re.M).group(1).split()
    script = re.search(r"^PACKAGES=\((.+)\)$", SCRIPT.read_text(), flags=re.M).group(1).split()
    assert listed == script
    assert re.search(r"^deploy-check: setup$", makefile, flags=re.M)
    assert "bash scripts/deploy_check.sh" in makefile


def test_check_scripts_parse():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    helper = REPO_ROOT / "scripts" / "deploy_check.py"
    assert subprocess.run([sys.executable, "-m", "py_compile", str(helper)], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_deploy_check_runs_the_compose_deployment(tmp_path):
    elunet = Path(sys.executable).with_name("elunet")
    if not elunet.exists():
        elunet = shutil.which("elunet")
    assert elunet, "no elunet CLI next to the test's Python"
    summary_file = tmp_path / "summary.json"
    env = {**os.environ, "ELUNET": str(elunet), "ELUNET_DEPLOY_SUMMARY": str(summary_file),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=1400)
    output = result.stdout + result.stderr
    if result.returncode == SKIPPED:
        pytest.skip(next((line for line in output.splitlines() if "SKIP" in line), output[-500:]))
    assert result.returncode == 0, output[-6000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("deploy-check: PASSED")]
    print(line)
    summary = json.loads(summary_file.read_text())
    assert summary["passed"]
    assert summary["replicas"] >= 3 and len(summary["spread"]) == summary["replicas"] and min(summary["spread"]) > 0
    stop = summary["replica_stop"]
    assert stop["failed"] <= stop["bound"] and stop["exit_code"] == 0
    assert summary["down"]["lost"] == 0 and summary["down"]["in_flight_answered"] > 0
    assert set(summary["down"]["exit_codes"].values()) == {0}
    assert summary["classify_agrees"] == "16/16"
