"""docker-compose.yml and the Dockerfile against the project: every service's image target, command,
port, health check, settings and volumes must be what the code really has.

No Docker engine runs here, so no image is built and no container started; `docker-compose config`
validates and resolves the compose file, and the rest is compared with the real CLI, settings and
FastAPI app.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from fixtures_deploy import (
    COMPOSE_FILE,
    DEPLOY_DIR,
    REPO_ROOT,
    compose_profiles,
    docker_compose,
    dockerfile_stages,
    elunet_command,
    exec_form,
    last_instruction,
    option_names,
    serve_default,
)

HEALTHCHECK_SCRIPT = DEPLOY_DIR / "healthcheck.py"


def stage_of(compose: dict, service: dict):
    """The Dockerfile stage a service's image comes from: its own build target, or that of the
    service that builds the same image."""
    stages = dockerfile_stages()
    if "build" in service:
        return stages[service["build"]["target"]]
    for other in compose["services"].values():
        if other.get("image") == service.get("image") and "build" in other:
            return stages[other["build"]["target"]]
    return None


def elunet_services(compose: dict) -> dict[str, list[str]]:
    """Services whose container runs `elunet` (the image's ENTRYPOINT): name -> command."""
    found = {}
    for name, service in compose["services"].items():
        stage = stage_of(compose, service)
        if stage is not None and exec_form(last_instruction(stage, "ENTRYPOINT") or "[]") == ["elunet"]:
            found[name] = service["command"]
    return found


def serve_services(compose: dict) -> dict[str, dict]:
    return {n: compose["services"][n] for n, cmd in elunet_services(compose).items() if cmd[0] == "serve"}


def volumes(service: dict) -> dict[str, tuple[str, bool]]:
    """Mount target -> (source, read-only), from either of compose's volume syntaxes."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            found[target] = (source, "ro" in mode)
        else:
            found[volume["target"]] = (volume["source"], volume.get("read_only", False))
    return found


def volume_source(service: dict, target: str) -> str:
    assert target in volumes(service), f"no volume mounted at {target}: {service.get('volumes')}"
    return volumes(service)[target][0]


def volume_read_only(service: dict, target: str) -> bool:
    return volumes(service)[target][1]


def gpu_reservations(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


# --- docker-compose config ---------------------------------------------------------------------


@pytest.mark.parametrize("profile", [None, *compose_profiles()])
def test_compose_config_accepts_the_file_for_every_profile(profile):
    args = ["config", "-q"] if profile is None else ["--profile", profile, "config", "-q"]
    result = docker_compose(*args)
    assert result.returncode == 0, result.stderr


def test_compose_declares_the_deployment_profiles():
    # jobs: train + export; cpu: the CPU-only server; scale: replicas + load balancer; trt; triton.
    assert {"jobs", "cpu", "scale", "trt", "triton"} <= set(compose_profiles())


def test_compose_config_accepts_a_host_folder_as_repository(compose):
    result = docker_compose("config", MODEL_REPOSITORY="./models")
    assert result.returncode == 0, result.stderr
    import yaml

    resolved = yaml.safe_load(result.stdout)
    assert volume_source(resolved["services"]["server"], "/models") == str(REPO_ROOT / "models")
    # By default: the named volume the jobs write and the servers read.
    assert volume_source(compose["services"]["server"], "/models") == "models"


def test_compose_config_rejects_a_broken_file(tmp_path):
    """The validation above can fail: a misspelt key is refused."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("restart: unless-stopped", "restrat: unless-stopped", 1))
    result = docker_compose("config", "-q", compose_file=broken)
    assert result.returncode != 0
    assert "restrat" in result.stderr


# --- images -------------------------------------------------------------------------------------


def test_every_built_image_is_a_dockerfile_target(compose):
    stages = dockerfile_stages()
    targets = {s["build"]["target"] for s in compose["services"].values() if "build" in s}
    assert targets, "no service builds an image"
    assert targets <= set(stages), f"targets missing from the Dockerfile: {targets - set(stages)}"
    for name, service in compose["services"].items():
        if service["image"].startswith("elunet:"):
            assert stage_of(compose, service) is not None, f"{name}: image {service['image']} is built by no service"


def test_serve_image_has_no_torch_and_runs_as_an_unprivileged_user():
    stages = dockerfile_stages()
    for target in ("serve", "serve-trt", "train"):
        assert last_instruction(stages[target], "USER") == "elunet", target
    setup = (DEPLOY_DIR / "runtime-setup.sh").read_text()
    assert re.search(r"useradd .*--uid 10001 .*elunet", setup)
    # The serve images install with deploy/install-serve.sh (it refuses torch; run for real in
    # test_deploy_serve_install.py), with no extra that pulls torch (train and export do).
    import tomllib

    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for target in ("serve", "serve-trt"):
        runs = " ".join(args for kw, args in stages[target].instructions if kw == "RUN")
        (chosen,) = re.findall(r'install-serve\.sh "\$\(ls /tmp/dist/elunet-\*\.whl\)" (\S+) ', runs)
        for extra in chosen.split(","):
            assert not any(dep.startswith(("torch", "elunet[train", "elunet[export")) for dep in extras[extra]), (target, extra)


def test_trt_images_build_the_elu_plugin_with_cmake():
    from elunet.plugins.library import LIBRARY_ENV, LIBRARY_FILE

    stages = dockerfile_stages()
    runs = " ".join(args for kw, args in stages["serve-trt"].instructions if kw == "RUN")
    assert "cmake -S /src/plugins/elu" in runs and "cmake --install" in runs
    # The engine builder and the TensorRT backend find the library through this variable.
    env = " ".join(args for kw, args in stages["serve-trt"].instructions if kw == "ENV")
    assert f"{LIBRARY_ENV}=/opt/elunet/lib/{LIBRARY_FILE}" in env
    # Both libraries are targets of the plugin's CMake project (installed into /opt/elunet/lib).
    cmake = (REPO_ROOT / "plugins" / "elu" / "CMakeLists.txt").read_text()
    assert "set(target elunet_trt_plugins)" in cmake and "set(target elunet_trt_plugins_static)" in cmake
    triton = " ".join(args for kw, args in stages["triton"].instructions)
    assert "/opt/elunet/lib/libelunet_trt_plugins_static.so" in triton and "LD_PRELOAD" in triton


# --- commands -------------------------------------------------------------------------------


def test_each_elunet_service_runs_a_real_subcommand_with_real_options(compose):
    from typer.testing import CliRunner

    from elunet.cli import app

    services = elunet_services(compose)
    assert {"server", "train", "export", "build-engine"} <= set(services)
    for name, command in services.items():
        click_command = elunet_command(command[0])
        assert click_command is not None, f"{name}: `elunet {command[0]}` does not exist"
        unknown = {arg for arg in command[1:] if arg.startswith("--")} - option_names(click_command)
        assert not unknown, f"{name}: `elunet {command[0]}` has no option {unknown}"
        result = CliRunner().invoke(app, [command[0], "--help"])
        assert result.exit_code == 0, result.output


# --- serving: port, health, settings -----------------------------------------------------------


def test_servers_publish_the_port_the_server_listens_on(compose):
    port = serve_default("port")
    stages = dockerfile_stages()
    services = serve_services(compose)
    assert {"server", "server-cpu", "server-trt", "replica"} <= set(services)
    for name, service in services.items():
        assert "ELUNET_PORT" not in service["environment"] or int(service["environment"]["ELUNET_PORT"]) == port
        assert last_instruction(stage_of(compose, service), "EXPOSE") == str(port), name
        assert service["environment"]["ELUNET_HOST"] == "0.0.0.0", f"{name}: must listen beyond the container's loopback"
        for published in service.get("ports", []):
            assert published["target"] == port, name
    assert stages  # parsed


def test_servers_health_check_asks_the_real_ready_route(compose, serve_routes):
    from elunet.serve.middleware import open_paths
    from elunet.serve.settings import ServeSettings

    open_by_default = open_paths(ServeSettings.model_fields["open_endpoints"].default)

    sys.path.insert(0, str(DEPLOY_DIR))
    try:
        import healthcheck
    finally:
        sys.path.remove(str(DEPLOY_DIR))
    assert healthcheck.READY_PATH in serve_routes
    assert healthcheck.READY_PATH in open_by_default, "an API key would make the health check fail"
    for name, service in serve_services(compose).items():
        assert service["healthcheck"]["test"] == ["CMD", "elunet-healthcheck"], name
        stage = stage_of(compose, service)
        assert exec_form(last_instruction(stage, "HEALTHCHECK").split("CMD", 1)[1]) == ["elunet-healthcheck"]
        copies = [args for kw, args in stage.instructions if kw == "COPY"]
        assert any(a.endswith("deploy/healthcheck.py /opt/elunet/bin/elunet-healthcheck") for a in copies), name


def test_health_check_script_reports_a_real_server(synthetic_server):
    def check(port: int) -> subprocess.CompletedProcess:
        env = {"PATH": "/usr/bin:/bin", "ELUNET_HOST": "127.0.0.1", "ELUNET_PORT": str(port)}
        return subprocess.run([sys.executable, str(HEALTHCHECK_SCRIPT), "5"], env=env, capture_output=True, text=True, timeout=60)

    ready = check(synthetic_server.port)
    assert ready.returncode == 0, ready.stderr
    from fixtures_serve import free_port

    nobody = check(free_port())
    assert nobody.returncode == 1
    assert "not ready" in nobody.stderr


def test_compose_environment_names_are_server_settings(compose):
    from elunet.serve.settings import env_names

    known = set(env_names().values())
    for name, service in serve_services(compose).items():
        unknown = {k for k in service["environment"] if k.startswith("ELUNET_")} - known
        assert not unknown, f"{name}: not settings of elunet serve: {unknown}"
        assert service["environment"]["ELUNET_REPOSITORY"] == "/models"
        volume_source(service, "/models")
        assert volume_read_only(service, "/models"), f"{name}: servers only read the repository"
    # Every setting a user may want to change is passed through (all but those fixed by the container).
    passed = set(compose["services"]["server"]["environment"])
    assert known - passed <= {"ELUNET_PORT", "ELUNET_GRPC_PORT", "ELUNET_METRICS_PORT"}, known - passed


def test_gpu_servers_reserve_a_gpu_and_the_cpu_variant_does_not(compose):
    for name, service in serve_services(compose).items():
        devices = gpu_reservations(service)
        if name == "server-cpu":
            assert devices == [], "the CPU variant must start on a machine without the NVIDIA runtime"
            assert service["build"]["args"]["ORT_PACKAGE"] == "onnxruntime"
            assert "cuda" not in service["build"]["args"]["SERVE_BASE"]
            assert service["environment"]["ELUNET_DEVICE"] == "cpu"
        else:
            assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name
        assert service["restart"] == "unless-stopped", name
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "ARG SERVE_BASE=" in dockerfile and "ARG ORT_PACKAGE=" in dockerfile
    for job in ("train", "build-engine"):
        assert gpu_reservations(compose["services"][job]), job


# --- the repository: jobs fill it, servers and Triton read it ----------------------------------


def test_jobs_fill_the_repository_the_servers_read(compose):
    services = compose["services"]
    train, export = services["train"]["command"], services["export"]["command"]
    run_dir = train[train.index("--out") + 1]
    assert export[1] == run_dir, "export must read the run train writes"
    assert volume_source(services["train"], "/runs") == volume_source(services["export"], "/runs")
    repository = export[export.index("--repository") + 1]
    written = volume_source(services["export"], repository)
    assert not volume_read_only(services["export"], repository)
    for name in serve_services(compose):
        assert volume_source(services[name], services[name]["environment"]["ELUNET_REPOSITORY"]) == written, name
    assert services["export"]["depends_on"]["train"]["condition"] == "service_completed_successfully"
    engine = services["build-engine"]["command"]
    assert engine[1].startswith(repository + "/") and engine[engine.index("--repository") + 1] == repository
    assert volume_source(services["build-engine"], repository) == written
    for job in ("train", "export", "build-engine"):
        assert services[job]["restart"] == "no", f"{job} is one-shot"


def test_triton_serves_the_same_repository_unchanged(compose):
    triton = compose["services"]["triton"]
    flags = dict(arg.split("=", 1) for arg in triton["command"][1:] if "=" in arg)
    assert triton["command"][0] == "tritonserver"
    path = flags["--model-repository"]
    assert volume_source(triton, path) == volume_source(compose["services"]["server"], "/models")
    assert volume_read_only(triton, path)
    # config.pbtxt as written, not completed by Triton from the model.
    assert "--disable-auto-complete-config" in triton["command"]


# --- scale-out on one host -----------------------------------------------------------------------


def nginx_directives(text: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.endswith(";"):
            key, _, value = line[:-1].partition(" ")
            directives.setdefault(key, []).append(value.strip())
    return directives


def size_bytes(value: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].lower() in units else int(value)


def seconds(value: str) -> float:
    return float(value[:-1]) * {"s": 1, "m": 60}[value[-1]] if value[-1] in "sm" else float(value)


def test_replicas_sit_behind_the_load_balancer(compose):
    services = compose["services"]
    replica, lb = services["replica"], services["lb"]
    assert replica["command"] == services["server"]["command"]
    assert replica["deploy"]["replicas"] >= 2
    assert "ports" not in replica, "replicas are reached through the load balancer only"
    conf_path = DEPLOY_DIR / "nginx.conf"
    assert volume_source(lb, "/etc/nginx/nginx.conf") == str(conf_path)
    directives = nginx_directives(conf_path.read_text())
    # proxy_pass uses a variable set to replica:<port>, so Docker's DNS is asked at run time.
    upstream = dict(v.split(" ", 1) for v in directives["set"])["$elunet_replicas"]
    assert upstream == f"replica:{serve_default('port')}"
    assert directives["proxy_pass"] == ["http://$elunet_replicas"]
    assert directives["resolver"][0].startswith("127.0.0.11 "), "Docker's embedded DNS"
    assert [p["target"] for p in lb["ports"]] == [int(directives["listen"][0])]
    assert size_bytes(directives["client_max_body_size"][0]) >= serve_default("max_body_bytes")
    assert seconds(directives["proxy_read_timeout"][0]) > serve_default("request_timeout_s")
    assert lb["depends_on"]["replica"]["condition"] == "service_healthy"
    assert "/v2/health/ready" in " ".join(lb["healthcheck"]["test"])


def test_nginx_accepts_the_load_balancer_config(tmp_path):
    nginx = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if nginx is None:
        pytest.skip("nginx is not installed (Debian package nginx); the config is still checked as text above")
    # nginx -t writes its pid file: keep it in tmp_path so that any user can run this.
    config = tmp_path / "nginx.conf"
    config.write_text((DEPLOY_DIR / "nginx.conf").read_text().replace("pid /tmp/nginx.pid;", f"pid {tmp_path}/nginx.pid;"))
    result = subprocess.run([nginx, "-t", "-q", "-e", "stderr", "-p", str(tmp_path), "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_build_engine_defaults_to_the_model_train_and_export_make(compose):
    defaults = {param.name: param.default for param in elunet_command("train").params}
    # `elunet train` names its model ARCH-ACTIVATION unless --name is given; export keeps the card's name.
    model = compose["services"]["build-engine"]["command"][1].split("/")[2]
    assert model == f"{defaults['arch']}-{defaults['activation']}"
