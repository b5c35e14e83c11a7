"""Serve-stage fixtures: synthetic model repositories and real `elunet serve` processes on 127.0.0.1.

Synthetic models (named so) are small ONNX graphs made here with a real
ModelCard, for protocol checks; the end-to-end tests use the real exported
repository (fixture ``exported_repository``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from elunet.card import CARD_FILE, ModelCard, Preprocessing
from elunet.contracts import INPUT_NAME, OUTPUT_NAME

SYNTHETIC_SHAPE = (1, 8, 8)
SYNTHETIC_LABELS = [f"class-{i}" for i in range(10)]
LINEAR, FAULTY = "synthetic-linear", "synthetic-faulty"


def synthetic_card(name: str) -> ModelCard:
    c, h, w = SYNTHETIC_SHAPE
    return ModelCard(
        name=name,
        architecture="synthetic-linear",
        activation="elu",
        alpha=1.0,
        dataset="synthetic",
        labels=SYNTHETIC_LABELS,
        preprocessing=Preprocessing(channels=c, height=h, width=w, color_mode="L", normalization="none"),
    )


def _synthetic_onnx(path: Path, faulty: bool, seed: int = 7) -> None:
    """logits = Elu(flatten(x) @ W + b). The faulty variant also gathers at index floor(2 * x[0, 0, 0, 0])
    from a 2-element table: a pixel of exactly 1.0 makes ONNX Runtime fail at run time (a real backend error)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    c, h, w = SYNTHETIC_SHAPE
    classes = len(SYNTHETIC_LABELS)
    inits = [
        numpy_helper.from_array(rng.normal(size=(c * h * w, classes)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(size=(classes,)).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Flatten", [INPUT_NAME], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["pre"]),
    ]
    if faulty:
        inits += [
            numpy_helper.from_array(np.array([0.0, 0.0], np.float32), "table"),
            numpy_helper.from_array(np.array([2.0], np.float32), "two"),
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
        ]
        nodes += [
            helper.make_node("Slice", ["flat", "zero", "one", "one"], ["first"]),  # [n, 1]
            helper.make_node("Mul", ["first", "two"], ["scaled"]),
            helper.make_node("Cast", ["scaled"], ["index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "index"], ["picked"]),  # [n, 1]
            helper.make_node("Add", ["pre", "picked"], ["pre2"]),
            helper.make_node("Elu", ["pre2"], [OUTPUT_NAME], alpha=1.0),
        ]
    else:
        nodes.append(helper.make_node("Elu", ["pre"], [OUTPUT_NAME], alpha=1.0))
    graph = helper.make_graph(
        nodes,
        "synthetic",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", c, h, w])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def add_synthetic_version(root: Path, name: str, version: int, seed: int = 7) -> Path:
    """ROOT/name/version/ with a synthetic linear model whose weights come from ``seed`` (no parity certificate)."""
    folder = root / name / str(version)
    folder.mkdir(parents=True)
    _synthetic_onnx(folder / "model.onnx", faulty=name == FAULTY, seed=seed)
    synthetic_card(name).save(folder / CARD_FILE)
    (root / name / "labels.txt").write_text("\n".join(SYNTHETIC_LABELS) + "\n")
    return folder


def make_synthetic_repository(root: Path, faulty: bool = True) -> Path:
    for name in [LINEAR, FAULTY] if faulty else [LINEAR]:
        add_synthetic_version(root, name, 1)
    return root


@pytest.fixture(scope="session")
def synthetic_repository(tmp_path_factory) -> Path:
    return make_synthetic_repository(tmp_path_factory.mktemp("synthetic-repository"))


def free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30):
    """(status, headers (case-insensitive), body bytes) without raising on 4xx/5xx."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


class ServerProcess:
    """`python -m elunet serve` as a subprocess; stopped with SIGTERM (killed if it hangs)."""

    def __init__(self, repository: Path, log_path: Path, env: dict | None = None, **options):
        self.port, spare = free_ports(2)  # held together: two free_port() calls may return the same port
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_port = options.pop("grpc_port", None) or spare
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        # Off unless a test asks for it: parallel servers would all want Triton's 8002.
        self.metrics_port = options.pop("metrics_port", 0)
        args = [sys.executable, "-m", "elunet", "serve", "--repository", str(repository), "--host", "127.0.0.1", "--port", str(self.port),
                "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port)]
        for key, value in options.items():
            args += [f"--{key.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 90) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log(6000)}")
            with contextlib.suppress(OSError):
                if http("GET", f"{self.url}/v2/health/ready", timeout=2)[0] == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log(6000)}")

    def log(self, tail: int | None = None) -> str:
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return text[-tail:] if tail else text

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def get_json(self, path: str):
        status, _, body = http("GET", self.url + path)
        return status, json.loads(body)


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    """Factory: start_server(repository, **options) -> ready ServerProcess; all stopped at session end."""
    started: list[ServerProcess] = []

    def start(repository: Path, *, wait: bool = True, env: dict | None = None, **options) -> ServerProcess:
        log = tmp_path_factory.mktemp("serve-log") / "server.log"
        server = ServerProcess(repository, log, env=env, **options)
        started.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def synthetic_server(start_server, synthetic_repository) -> ServerProcess:
    """One server on the synthetic repository, shared by the protocol tests."""
    return start_server(synthetic_repository, max_batch_size=8, max_queue_delay_ms=2, max_body_bytes=1 << 20, allow_unverified=True)


def binary_infer_body(pixels: np.ndarray, datatype: str = "FP32", binary_output: bool = True) -> tuple[bytes, dict]:
    """A V2 infer request with the binary tensor extension, as tritonclient sends it."""
    header = {
        "inputs": [{"name": INPUT_NAME, "shape": list(pixels.shape), "datatype": datatype, "parameters": {"binary_data_size": pixels.nbytes}}],
        "parameters": {"binary_data_output": binary_output},
    }
    head = json.dumps(header).encode()
    return head + pixels.tobytes(), {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


def parse_infer_response(headers: dict, body: bytes) -> np.ndarray:
    length = headers.get("Inference-Header-Content-Length")
    if length is None:
        out = json.loads(body)["outputs"][0]
        return np.asarray(out["data"], np.float32).reshape(out["shape"])
    head = json.loads(body[: int(length)])
    out = head["outputs"][0]
    return np.frombuffer(body[int(length) :], "<f4").reshape(out["shape"])
