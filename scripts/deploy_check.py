#!/usr/bin/env python3
"""The compose part of `make deploy-check` (scripts/deploy_check.sh prepares podman, the images and
the model, then runs this). Standard library only.

It runs docker-compose.yml, with deploy/check/docker-compose.check.yml on top (images only), through
Debian's docker-compose against podman's API socket, and checks:

- image: elunet:serve-cpu runs as elunet (uid 10001) on a read-only root filesystem, holds no torch;
  its size;
- profile cpu: server-cpu becomes healthy by its own HEALTHCHECK; start-to-ready; V2 infer on real
  Fashion-MNIST test images and /v1 classify of the same images as PNG files, from the host;
- profile scale: REPLICAS replicas behind nginx; requests through it reach every replica (each
  replica's own /metrics); one replica stopped under load: failed requests counted (bound: the
  load's concurrency), the replica started again gets traffic again;
- Prometheus (its HTTP API): up == 1 for every server and elunet's metrics for each;
- `docker-compose down` under load: every server answers what it accepted (0 lost) and exits 0;
  nothing of the project is left.

Podman runs without systemd here, so nothing schedules the containers' health checks: a thread runs
`podman healthcheck run` (the image's HEALTHCHECK command, in the container) every second until a
container is healthy, then at the compose file's 15 s interval.

Traffic: 127.0.0.1 (published ports) and the compose project's own network (the replicas' own
addresses) only.
"""

from __future__ import annotations

import argparse
import gzip
import errno
import http.client
import ipaddress
import json
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

DATASET = Path(os.environ.get("ELUNET_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
MODEL = "fashion-cnn-elu"
SUCCESS_METRIC = "nv_inference_request_success"
HEALTH_INTERVAL_S = 15.0  # docker-compose.yml's healthcheck interval, once a container is healthy
ELUNET_UID = 10001


def log(message: str) -> None:
    print(f"[deploy-check {time.time() - STARTED:6.1f}s] {message}", flush=True)


class CheckFailed(Exception):
    pass


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# --- podman and docker-compose -----------------------------------------------------------


def run(cmd: list[str], timeout: float = 300, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise CheckFailed(f"{' '.join(cmd[:6])} ... exited {result.returncode}: {(result.stderr or result.stdout)[-2000:]}")
    return result


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return run(["podman", *args], timeout=timeout, check=check)


def inspect(name: str) -> dict:
    return json.loads(podman("inspect", "--type", "container", name).stdout)[0]


def parse_time(text: str) -> float:
    """Podman's RFC 3339 times (nanoseconds, maybe a zone name) as a Unix time."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", text)
    require(match is not None, f"unreadable time {text!r}")
    base, fraction, zone = match.groups()
    stamp = datetime.fromisoformat(base + ("+00:00" if zone in (None, "Z") else zone)).timestamp()
    return stamp + (float("0." + fraction) if fraction else 0.0)


class Compose:
    def __init__(self, root: Path, project: str, socket_path: str, variables: dict[str, str]):
        binary = shutil.which("docker-compose")
        require(binary is not None, "docker-compose is not installed")
        self.base = [binary, "--project-directory", str(root), "-p", project,
                     "-f", str(root / "docker-compose.yml"), "-f", str(root / "deploy/check/docker-compose.check.yml")]
        # The host's ELUNET_* or MODEL_REPOSITORY must not change what runs: a clean environment.
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "CONTAINERS_CONF")
        self.env = {k: v for k, v in os.environ.items() if k in keep}
        self.env.update(variables, DOCKER_HOST=f"unix://{socket_path}")
        self.project = project

    def __call__(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return run([*self.base, *args], timeout=timeout, env=self.env)

    def containers(self, service: str | None = None, running: bool = True) -> list[str]:
        filters = ["--filter", f"label=com.docker.compose.project={self.project}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        out = podman("ps", *([] if running else ["-a"]), *filters, "--format", "{{.Names}}").stdout
        return sorted(out.split())


class HealthChecks(threading.Thread):
    """Runs each running container's own health check, as podman's systemd timers would."""

    def __init__(self, compose: Compose):
        super().__init__(daemon=True)
        self.compose = compose
        self.stop = threading.Event()
        self.healthy_at: dict[str, float] = {}
        self.last_run: dict[str, float] = {}
        self.no_check: set[str] = set()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                names = self.compose.containers()
            except Exception:  # noqa: BLE001 - podman busy; next round
                continue
            for name in names:
                if name in self.no_check:
                    continue
                healthy = self.healthy_at.get(name)
                if healthy and time.time() - self.last_run.get(name, 0) < HEALTH_INTERVAL_S:
                    continue
                self.last_run[name] = time.time()
                result = podman("healthcheck", "run", name, timeout=60, check=False)
                if "no defined healthcheck" in result.stderr or "has no healthcheck" in result.stderr:
                    self.no_check.add(name)
                elif result.returncode == 0 and "unhealthy" not in result.stdout:
                    self.healthy_at.setdefault(name, time.time())
                else:
                    self.healthy_at.pop(name, None)

    def forget(self, name: str) -> None:
        """The container restarts: its health starts over."""
        self.healthy_at.pop(name, None)
        self.last_run.pop(name, None)

    def wait_healthy(self, names: list[str], timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            statuses = {n: inspect(n)["State"].get("Health", {}).get("Status") for n in names}
            if all(s == "healthy" for s in statuses.values()):
                return
            time.sleep(0.5)
        raise CheckFailed(f"not healthy within {timeout:.0f} s: {statuses}")


# --- data, requests -------------------------------------------------------------------------


def test_images(count: int) -> tuple[list[bytes], list[int]]:
    with gzip.open(DATASET / "t10k-images-idx3-ubyte.gz") as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        require(magic == 2051 and (rows, cols) == (28, 28), "unexpected Fashion-MNIST image file")
        images = [f.read(rows * cols) for _ in range(min(count, n))]
    with gzip.open(DATASET / "t10k-labels-idx1-ubyte.gz") as f:
        f.read(8)
        labels = list(f.read(len(images)))
    return images, labels


def infer_body(images: list[bytes]) -> bytes:
    data = [v / 255.0 for image in images for v in image]
    return json.dumps({"inputs": [{"name": "input", "shape": [len(images), 1, 28, 28], "datatype": "FP32", "data": data}]}).encode()


def png(pixels: bytes, width: int = 28, height: int = 28) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + pixels[y * width:(y + 1) * width] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def multipart(files: list[tuple[str, bytes]], boundary: str = "elunet-deploy-check") -> tuple[bytes, str]:
    parts = []
    for name, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n1\r\n--{boundary}--\r\n'.encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class ProjectNetwork:
    """The compose project's network: its bridge on this host and its subnets."""

    device: str | None = None
    subnets: list = []

    @classmethod
    def find(cls, project: str) -> None:
        info = json.loads(podman("network", "inspect", f"{project}_default").stdout)[0]
        cls.device = info["network_interface"]
        cls.subnets = [ipaddress.ip_network(s["subnet"]) for s in info["subnets"]]
        log(f"network {project}_default: bridge {cls.device}, {', '.join(map(str, cls.subnets))}")


class Connection(http.client.HTTPConnection):
    """HTTP to loopback, or to the project network's addresses through its bridge only.

    A container's address is bound to the bridge (SO_BINDTODEVICE): once `down` has removed the
    network, a connection to it fails here instead of following the default route off the machine."""

    def connect(self) -> None:
        address = ipaddress.ip_address(self.host)
        if address.is_loopback:
            return super().connect()
        if ProjectNetwork.device is None or not any(address in net for net in ProjectNetwork.subnets):
            raise OSError(errno.EHOSTUNREACH, f"{address} is not on the project's network: not sent")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ProjectNetwork.device.encode())
            sock.settimeout(self.timeout)
            sock.connect((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def request(host: str, port: int, method: str, path: str, body: bytes | None = None,
            content_type: str = "application/json", timeout: float = 30) -> tuple[int, bytes]:
    conn = Connection(host, port, timeout=timeout)
    try:
        headers = {"Connection": "close"}
        if body is not None:
            headers["Content-Type"] = content_type
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def get_json(host: str, port: int, path: str) -> dict:
    status, body = request(host, port, "GET", path)
    require(status == 200, f"GET {host}:{port}{path}: HTTP {status} {body[:300]!r}")
    return json.loads(body)


def success_count(host: str, port: int = 8000) -> float:
    """A server's nv_inference_request_success, summed over its label sets."""
    status, body = request(host, port, "GET", "/metrics", timeout=10)
    require(status == 200, f"GET {host}:{port}/metrics: HTTP {status}")
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines() if line.startswith(SUCCESS_METRIC + "{"))


def wait_ready(host: str, port: int, timeout: float) -> float:
    """Poll /v2/health/ready every 0.1 s; the Unix time of its first 200."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            status, _ = request(host, port, "GET", "/v2/health/ready", timeout=2)
            if status == 200:
                return time.time()
        except OSError:
            pass
        time.sleep(0.1)
    raise CheckFailed(f"{host}:{port} not ready within {timeout:.0f} s")


@dataclass
class Outcome:
    target: str
    start: float
    end: float
    kind: str  # ok | refused (no connection: not accepted) | failed (connected, then no 200)
    detail: str = ""


@dataclass
class Load:
    """Closed-loop load: `workers` threads per target, one new connection per request (so a refused
    connection, never accepted, is told apart from an accepted request that got no answer)."""

    targets: dict[str, tuple[str, int]]
    path: str
    body: bytes
    workers: int
    stop_after_refused_s: float | None = None  # a worker ends once its target refused this long
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self):
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._work, args=(name,), daemon=True)
                        for name in self.targets for _ in range(self.workers)]

    def start(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def finish(self, timeout: float = 120) -> list[Outcome]:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout)
        return self.outcomes

    def _work(self, name: str) -> None:
        host, port = self.targets[name]
        refused_since = None
        while not self.stop.is_set():
            start = time.time()
            # A stopped container's address answers nothing at all: connect gives up after 2 s.
            conn = Connection(host, port, timeout=2)
            try:
                conn.connect()
                conn.sock.settimeout(60)
            except OSError as exc:
                self._record(Outcome(name, start, time.time(), "refused", type(exc).__name__))
                refused_since = refused_since or start
                if self.stop_after_refused_s is not None and time.time() - refused_since > self.stop_after_refused_s:
                    return
                time.sleep(0.05)
                continue
            refused_since = None
            try:
                conn.request("POST", self.path, body=self.body, headers={"Content-Type": "application/json", "Connection": "close"})
                response = conn.getresponse()
                response.read()
                kind, detail = ("ok", "") if response.status == 200 else ("failed", f"HTTP {response.status}")
            except (OSError, http.client.HTTPException) as exc:
                kind, detail = "failed", type(exc).__name__
            finally:
                conn.close()
            self._record(Outcome(name, start, time.time(), kind, detail))

    def _record(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)


def tally(items) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return dict(sorted(counts.items()))


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else (values[0] if values else 0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the check ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--image", default="elunet:serve-cpu")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--started", type=float, default=time.time())
    args = parser.parse_args()
    global STARTED
    STARTED = args.started

    figures: dict = {"replicas": args.replicas}
    ports = {"SERVER_PORT": free_port(), "LB_PORT": free_port(), "PROMETHEUS_PORT": free_port()}
    # Published on loopback only.
    variables = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    variables["REPLICAS"] = str(args.replicas)
    compose = Compose(args.root, args.project, args.socket, variables)
    health = HealthChecks(compose)
    profiles = ["--profile", "cpu", "--profile", "scale"]
    down_done = False
    status = 1
    try:
        volumes_before = anonymous_volumes()
        check_image(args.image, figures)
        fill_models_volume(args.project, args.repository)
        health.start()
        check_cpu_profile(compose, health, profiles, ports, figures)
        replicas = check_scale_profile(compose, health, profiles, ports, figures)
        check_prometheus(ports, replicas, figures)
        check_down(compose, profiles, ports, replicas, figures)
        down_done = True
        check_nothing_left(args.project, volumes_before)
        status = 0
    except CheckFailed as exc:
        figures["failure"] = str(exc)
        print(f"deploy-check: FAILED: {exc}", file=sys.stderr, flush=True)
        dump_logs(compose, args.work)
    finally:
        health.stop.set()
        if not down_done:
            try:
                compose(*profiles, "down", "-v", "--remove-orphans", "-t", "5", timeout=300)
            except Exception as exc:  # noqa: BLE001 - deploy_check.sh's trap removes what is left
                print(f"deploy-check: compose down failed: {exc}", file=sys.stderr)
    figures["wall_s"] = round(time.time() - STARTED, 1)
    summary(status, figures)
    return status


def check_image(image: str, figures: dict) -> None:
    config = json.loads(podman("image", "inspect", image).stdout)[0]
    figures["image_mb"] = round(config["Size"] / 1e6)
    user = config["Config"].get("User")
    require(user == "elunet", f"{image} runs as {user!r}, not elunet")
    probe = podman("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c",
                   "import importlib.util, sys; print('torch' if importlib.util.find_spec('torch') else 'no torch')")
    require(probe.stdout.strip() == "no torch", f"{image} holds torch")
    log(f"{image}: {figures['image_mb']} MB, user {user}, no torch")


def fill_models_volume(project: str, repository: Path) -> None:
    """The named volume `models` of docker-compose.yml, made as compose makes it, holding the export."""
    volume = f"{project}_models"
    podman("volume", "create", "--label", f"com.docker.compose.project={project}",
           "--label", "com.docker.compose.volume=models", "--label", "com.docker.compose.version=1.29.2", volume)
    tar = subprocess.run(["tar", "-C", str(repository), "-c", "."], capture_output=True, check=True).stdout
    result = subprocess.run(["podman", "volume", "import", volume, "-"], input=tar, capture_output=True, timeout=120)
    require(result.returncode == 0, f"podman volume import: {result.stderr.decode()[-500:]}")
    log(f"volume {volume}: {', '.join(sorted(p.name for p in repository.iterdir()))}")


def check_cpu_profile(compose: Compose, health: HealthChecks, profiles, ports, figures) -> None:
    log("profile cpu: up server-cpu prometheus")
    compose(*profiles, "up", "-d", "--no-build", "server-cpu", "prometheus")
    (server,) = compose.containers("server-cpu")
    started = parse_time(inspect(server)["State"]["StartedAt"])
    ready = wait_ready("127.0.0.1", ports["SERVER_PORT"], 120)
    figures["start_to_ready_s"] = round(ready - started, 1)
    health.wait_healthy([server], 120)
    figures["start_to_healthy_s"] = round(health.healthy_at.get(server, time.time()) - started, 1)
    log(f"{server}: ready {figures['start_to_ready_s']} s after start, healthy (its HEALTHCHECK) after {figures['start_to_healthy_s']} s")

    state = inspect(server)
    require(state["HostConfig"].get("ReadonlyRootfs") is True, "server-cpu's root filesystem is not read-only")
    write = podman("exec", server, "sh", "-c", "touch /probe 2>&1; id -u", check=False).stdout
    require("Read-only file system" in write, f"a write to / did not fail: {write!r}")
    uid = int(write.strip().splitlines()[-1])
    require(uid == ELUNET_UID, f"server-cpu runs as uid {uid}")
    log(f"{server}: uid {uid}, root filesystem read-only (a write to / fails), /tmp a tmpfs")

    # V2 infer from the host, on real test images.
    images, labels = test_images(256)
    predicted = []
    for i in range(0, len(images), 64):
        status, body = request("127.0.0.1", ports["SERVER_PORT"], "POST", f"/v2/models/{MODEL}/infer", infer_body(images[i:i + 64]))
        require(status == 200, f"infer: HTTP {status} {body[:300]!r}")
        logits = json.loads(body)["outputs"][0]["data"]
        predicted += [max(range(10), key=lambda k, row=logits[j * 10:(j + 1) * 10]: row[k]) for j in range(len(logits) // 10)]
    accuracy = sum(p == y for p, y in zip(predicted, labels)) / len(labels)
    figures["infer_accuracy"] = round(accuracy, 3)
    require(accuracy > 0.3, f"infer accuracy {accuracy:.3f} on {len(labels)} test images: not a trained model")
    # /v1 classify: the same images as PNG files; its top label must be infer's.
    body, content_type = multipart([(f"test-{i}.png", png(images[i])) for i in range(16)])
    status, answer = request("127.0.0.1", ports["SERVER_PORT"], "POST", f"/v1/models/{MODEL}/classify", body, content_type)
    require(status == 200, f"classify: HTTP {status} {answer[:300]!r}")
    top = [p["top"][0]["index"] for p in json.loads(answer)["predictions"]]
    agree = sum(a == b for a, b in zip(top, predicted[:16]))
    figures["classify_agrees"] = f"{agree}/16"
    require(agree == 16, f"classify and infer disagree on {16 - agree} of 16 images")
    log(f"infer: accuracy {accuracy:.3f} on {len(labels)} Fashion-MNIST test images; classify (PNG files): same top label for 16/16")


def replica_addresses(compose: Compose) -> dict[str, str]:
    found = {}
    for name in compose.containers("replica"):
        networks = inspect(name)["NetworkSettings"]["Networks"]
        found[name] = next(n["IPAddress"] for n in networks.values() if n.get("IPAddress"))
    return found


def check_scale_profile(compose: Compose, health: HealthChecks, profiles, ports, figures) -> dict[str, str]:
    log(f"profile scale: up replica lb (lb waits for the replicas to be healthy)")
    compose(*profiles, "up", "-d", "--no-build", "replica", "lb")
    ProjectNetwork.find(compose.project)
    replicas = replica_addresses(compose)
    require(len(replicas) == figures["replicas"], f"{len(replicas)} replicas running, {figures['replicas']} asked")
    (lb,) = compose.containers("lb")
    health.wait_healthy([*replicas, lb], 120)
    wait_ready("127.0.0.1", ports["LB_PORT"], 60)
    log(f"{len(replicas)} replicas healthy ({', '.join(f'{n} {ip}' for n, ip in replicas.items())}), lb healthy")

    # Requests through nginx reach every replica: each replica's own counter.
    images, _ = test_images(8)
    body = infer_body(images)
    before = {name: success_count(ip) for name, ip in replicas.items()}
    load = Load({"lb": ("127.0.0.1", ports["LB_PORT"])}, f"/v2/models/{MODEL}/infer", body, workers=6).start()
    time.sleep(8)
    outcomes = load.finish()
    spread = {name: int(success_count(ip) - before[name]) for name, ip in replicas.items()}
    ok = sum(o.kind == "ok" for o in outcomes)
    figures["spread"] = list(spread.values())
    require(all(v > 0 for v in spread.values()), f"not every replica got requests: {spread}")
    require(ok == len(outcomes), f"{len(outcomes) - ok} of {len(outcomes)} requests through nginx failed")
    require(sum(spread.values()) == ok, f"replicas counted {sum(spread.values())} requests, the client {ok}")
    log(f"through nginx: {ok} requests, per replica {spread}")

    # One replica stopped under load, then started again.
    victim = sorted(replicas)[1]
    others = [n for n in replicas if n != victim]
    load = Load({"lb": ("127.0.0.1", ports["LB_PORT"])}, f"/v2/models/{MODEL}/infer", body, workers=8).start()
    time.sleep(4)
    stop_at = time.time()
    podman("stop", "-t", "40", victim, timeout=60)  # what `docker stop` does, with compose's stop_grace_period
    stopped_at = time.time()
    exit_code = inspect(victim)["State"]["ExitCode"]
    health.forget(victim)
    others_before = {n: success_count(replicas[n]) for n in others}
    time.sleep(12)  # longer than nginx's DNS cache (valid=10s): the stale address is dropped
    others_after = {n: success_count(replicas[n]) for n in others}
    restart_at = time.time()
    podman("start", victim)
    new_ip = replica_addresses(compose)[victim]
    replicas[victim] = new_ip
    health.wait_healthy([victim], 120)
    back_at = None
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if success_count(new_ip) > 0:
                back_at = time.time()
                break
        except OSError:
            pass
        time.sleep(0.5)
    outcomes = load.finish()
    require(back_at is not None, f"{victim} got no request through nginx within 60 s of being started again")
    failed = [o for o in outcomes if o.kind != "ok"]
    window = [o for o in outcomes if o.start >= stop_at - 1 and o.start <= restart_at]
    figures["replica_stop"] = {
        "requests": len(outcomes), "failed": len(failed), "bound": load.workers,
        "during_stop": len(window), "failed_during_stop": sum(o.kind != "ok" for o in window),
        "stop_s": round(stopped_at - stop_at, 1), "exit_code": exit_code,
        "p99_ms_during_stop": round(1000 * p99([o.end - o.start for o in window if o.kind == "ok"])),
        "back_after_s": round(back_at - restart_at, 1),
        "failures": tally(f"{o.kind} {o.detail}" for o in failed),
    }
    log(f"stopped {victim} under load in {stopped_at - stop_at:.1f} s (exit {exit_code}): "
        f"{len(failed)} of {len(outcomes)} requests failed ({figures['replica_stop']['failures']}); "
        f"the others kept answering {({n: int(others_after[n] - others_before[n]) for n in others})}; "
        f"p99 {figures['replica_stop']['p99_ms_during_stop']} ms while it was down; "
        f"started again, it got requests after {back_at - restart_at:.1f} s")
    require(exit_code == 0, f"{victim} exited {exit_code} on stop")
    require(all(others_after[n] > others_before[n] for n in others), "the remaining replicas got no requests while one was down")
    require(len(failed) <= load.workers, f"{len(failed)} requests failed while a replica was stopped (bound {load.workers})")
    return replicas


def check_prometheus(ports, replicas: dict[str, str], figures) -> None:
    """Prometheus's own API: every server scraped (up == 1) with elunet's metrics, by DNS discovery."""
    port = ports["PROMETHEUS_PORT"]
    expected = {"server-cpu": 1, "replica": len(replicas)}
    deadline = time.time() + 120
    while True:
        up = get_json("127.0.0.1", port, "/api/v1/query?" + urllib.parse.urlencode({"query": 'up{job="elunet"}'}))["data"]["result"]
        counts = {}
        for series in up:
            if series["value"][1] == "1":
                counts[series["metric"].get("service")] = counts.get(series["metric"].get("service"), 0) + 1
        query = urllib.parse.urlencode({"query": f"sum by (service) ({SUCCESS_METRIC})"})
        metrics = {s["metric"].get("service"): float(s["value"][1]) for s in get_json("127.0.0.1", port, "/api/v1/query?" + query)["data"]["result"]}
        live = {s for s in expected if counts.get(s, 0) >= expected[s] and metrics.get(s, 0) > 0}
        if live == set(expected) or time.time() > deadline:
            break
        time.sleep(2)
    figures["prometheus_up"] = f"{sum(counts.values())}/{sum(expected.values())}"
    figures["prometheus_success_total"] = {k: int(v) for k, v in metrics.items()}
    require(live == set(expected), f"Prometheus: up == 1 for {counts}, {SUCCESS_METRIC} {metrics}; expected {expected}")
    log(f"Prometheus: up == 1 for {counts} (job elunet); {SUCCESS_METRIC} by service {figures['prometheus_success_total']}")


def died_events(project: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["podman", "events", "--format", "json", "--filter", f"label=com.docker.compose.project={project}", "--filter", "event=died"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )


def container_log(name: str, since: float) -> str:
    """A (stopped) container's whole log from `since` on."""
    done = subprocess.run(["podman", "logs", "--since", str(int(since)), name], capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def answered(log_text: str, since: float) -> list[tuple[str, int]]:
    """(client address, status) of each /infer request the server's access log shows answered."""
    found = []
    for line in log_text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("logger") == "elunet.serve.access" and str(entry.get("path", "")).endswith("/infer") \
                and parse_time(entry["ts"]) >= since:
            found.append((entry["client"].rsplit(":", 1)[0], int(entry["status"])))
    return found


def check_down(compose: Compose, profiles, ports, replicas: dict[str, str], figures) -> None:
    """`docker-compose down` while every server is under load, directly and through nginx.

    It runs as its two steps, `stop` (SIGTERM under load: the drain this phase is about) and then
    `down -v`, so that each server's log is read whole from its stopped container in between: a
    `podman logs -f` that follows a container which `down` removes can end before it has read the
    last lines (once 248 answers were missing from what the followers had read).

    A request is in flight once the server has read it: the server's access log lists it with the
    status it answered. Lost = read but not answered 200, or answered but the answer never reached
    the client. A connection the closing server resets before reading a request is counted apart
    (the client sees a reset; nginx retries such a request on another replica)."""
    targets = {"server-cpu": ("127.0.0.1", ports["SERVER_PORT"]), "lb": ("127.0.0.1", ports["LB_PORT"])}
    targets.update({name: (ip, 8000) for name, ip in replicas.items()})
    (server,) = compose.containers("server-cpu")
    (lb,) = compose.containers("lb")
    lb_ip = next(n["IPAddress"] for n in inspect(lb)["NetworkSettings"]["Networks"].values() if n.get("IPAddress"))
    container_of = {"server-cpu": server, "lb": lb, **{n: n for n in replicas}}
    servers = [server, *replicas]
    images, _ = test_images(64)
    phase_start = time.time()
    events = died_events(compose.project)
    time.sleep(0.5)
    load = Load(targets, f"/v2/models/{MODEL}/infer", infer_body(images), workers=3, stop_after_refused_s=1.0).start()
    time.sleep(4)
    down_at = time.time()
    log("docker-compose stop, then down -v, under load on every server and on nginx")
    compose(*profiles, "stop", timeout=300)
    down_s = time.time() - down_at
    time.sleep(1)
    outcomes = load.finish()
    texts = {name: container_log(name, phase_start - 1) for name in servers}
    compose(*profiles, "down", "-v", "--remove-orphans", timeout=300)
    events.terminate()
    exits = {}
    for line in events.communicate(timeout=30)[0].splitlines():
        event = json.loads(line)
        # podman leaves ContainerExitCode out of the event when it is 0
        exits[event["Name"]] = (event.get("ContainerExitCode", 0), parse_time(event["Time"]))
    server_log, delivery_waits = {}, 0
    for name, text in texts.items():
        server_log[name] = answered(text, phase_start)
        delivery_waits += text.count("until the kernel had delivered")  # serve/delivery.py

    ok = {name: sum(o.kind == "ok" and o.target == name for o in outcomes) for name in targets}
    reset = [o for o in outcomes if o.kind == "failed"]
    # What the servers answered, split into nginx's requests and the direct ones.
    direct = {name: sum(1 for client, status in server_log[container_of[name]] if client != lb_ip and status == 200)
              for name in targets if name != "lb"}
    via_lb = sum(1 for name in replicas for client, status in server_log[name] if client == lb_ip and status == 200)
    not_200 = sum(1 for entries in server_log.values() for _, status in entries if status != 200)
    undelivered = sum(max(0, direct[name] - ok[name]) for name in direct) + max(0, via_lb - ok["lb"])
    unlogged = sum(max(0, ok[name] - direct[name]) for name in direct) + max(0, ok["lb"] - via_lb)
    lost = not_200 + undelivered
    in_flight = [o for o in outcomes if o.kind == "ok" and o.end > down_at
                 and o.start < exits.get(container_of[o.target], (None, float("inf")))[1]]
    figures["down"] = {
        "s": round(down_s, 1), "requests": len(outcomes), "in_flight_answered": len(in_flight), "lost": lost,
        "server_answered": sum(direct.values()) + via_lb, "client_ok": sum(ok.values()),
        "reset_unread": len(reset), "resets": tally(f"{o.target}: {o.detail}" for o in reset), "delivery_waits": delivery_waits,
        "exit_codes": {name: exits.get(name, (None,))[0] for name in [*servers, lb]},
    }
    d = figures["down"]
    log(f"down in {down_s:.1f} s: the servers answered {d['server_answered']} requests 200 in this phase, the clients got "
        f"{d['client_ok']}; {len(in_flight)} of them were in flight during the shutdown; lost {lost}; "
        f"connections reset before a request was read: {len(reset)} {d['resets']}; exit codes {d['exit_codes']}; "
        f"servers that waited for the kernel to deliver their last answers: {delivery_waits}")
    for o in reset[:5]:
        died = exits.get(container_of[o.target], (None, down_at))[1]
        log(f"  reset: {o.target} {o.detail}: started {o.start - down_at:+.2f} s after down began, "
            f"ended {o.end - down_at:+.2f} s; the container died at {died - down_at:+.2f} s")
    require(lost == 0, f"{lost} requests the servers had read were lost ({not_200} not answered 200, {undelivered} answers not delivered)")
    require(unlogged == 0, f"{unlogged} answers the clients got are missing from the servers' access logs")
    require(len(in_flight) > 0, "no request was in flight during down: the drain was not exercised")
    require(all(o.target != "lb" for o in reset), "a request through nginx failed during down")
    direct_workers = load.workers * (len(targets) - 1)
    require(len(reset) <= direct_workers, f"{len(reset)} connections reset unread (bound: {direct_workers}, one per direct client)")
    bad = {n: c for n, c in d["exit_codes"].items() if c != 0}
    require(not bad, f"containers that did not exit 0 on down: {bad}")


def anonymous_volumes() -> set[str]:
    return set(podman("volume", "ls", "-q", "--filter", "dangling=true").stdout.split())


def check_nothing_left(project: str, volumes_before: set[str]) -> None:
    label = f"label=com.docker.compose.project={project}"
    left = {
        "containers": podman("ps", "-aq", "--filter", label).stdout.split(),
        "networks": podman("network", "ls", "-q", "--filter", label).stdout.split(),
        "volumes": podman("volume", "ls", "-q", "--filter", label).stdout.split()
        + sorted(anonymous_volumes() - volumes_before),
    }
    require(not any(left.values()), f"left after down: {left}")
    log("nothing of the project is left (containers, networks, volumes)")


def dump_logs(compose: Compose, work: Path) -> None:
    try:
        for name in compose.containers(running=False):
            out = podman("logs", "--tail", "30", name, check=False)
            print(f"--- logs of {name} (last 30 lines)\n{out.stdout[-4000:]}{out.stderr[-4000:]}", file=sys.stderr)
    except Exception:  # noqa: BLE001
        pass


def summary(status: int, f: dict) -> None:
    if path := os.environ.get("ELUNET_DEPLOY_SUMMARY"):
        Path(path).write_text(json.dumps({"passed": status == 0, **f}, indent=2))
    parts = [f"deploy-check: {'PASSED' if status == 0 else 'FAILED'}"]
    if "image_mb" in f:
        parts.append(f"elunet:serve-cpu {f['image_mb']} MB, no torch, uid {ELUNET_UID}, read-only root")
    if "start_to_ready_s" in f:
        parts.append(f"start-to-ready {f['start_to_ready_s']} s (healthy {f['start_to_healthy_s']} s)")
    if "infer_accuracy" in f:
        parts.append(f"infer acc {f['infer_accuracy']}, classify {f['classify_agrees']}")
    if "spread" in f:
        parts.append(f"{f['replicas']} replicas, spread {'/'.join(map(str, f['spread']))}")
    if "replica_stop" in f:
        s = f["replica_stop"]
        parts.append(f"replica stop: {s['failed']}/{s['requests']} failed (bound {s['bound']}), back in {s['back_after_s']} s")
    if "prometheus_up" in f:
        parts.append(f"prometheus up {f['prometheus_up']}")
    if "down" in f:
        d = f["down"]
        parts.append(f"down: {d['lost']} lost of {d['in_flight_answered']} in flight, {d['reset_unread']} reset unread, "
                     f"exit 0 x{sum(c == 0 for c in d['exit_codes'].values())}/{len(d['exit_codes'])}")
    parts.append(f"{f['wall_s']} s")
    print(" | ".join(parts), flush=True)


STARTED = time.time()

if __name__ == "__main__":
    sys.exit(main())
