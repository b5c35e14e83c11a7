"""elunet beside the servers a user would pick instead, on the same ONNX model, in one run.

For each model (a freshly initialised network of the architecture, exported by elunet into a
temporary repository: speed does not depend on the weights), one after the other on 127.0.0.1:

- MLServer (a small runtime of ours runs the ONNX file, benchmarks/peers/mlserver_onnx.py; its adaptive
  batching on) and LitServe (benchmarks/peers/litserve_onnx.py; its batching on), both with elunet's
  max batch size and queue delay, as read from the model's served configuration; each with its
  defaults (one inference process), and MLServer also with one inference process per CPU, one ONNX
  Runtime thread each (the layout of elunet's instances when it runs two on two CPUs);
- elunet serve with its defaults: V2 JSON, the binary tensor extension, and gRPC;
- elunet's ONNX Runtime engine without a server (a process of its own): batch 1, and the batch size elunet's server formed under
  the JSON load (the ceiling of what serving can reach), measured right after each elunet JSON run; elunet JSON / raw is the
  mean of each run's ratio to its own ceiling, so that the host's drift in speed does not enter it.

Every server is first checked to answer the model's logits for the test image (atol 1e-4 against ONNX
Runtime here), then driven by wrk (-c CONNECTIONS, one fixed V2 JSON request of one image; the binary
body for elunet binary) or, for gRPC, by benchmarks/grpc_load.py (the same number of calls in flight
from one Python process). All ONNX Runtime sessions have the same settings (elunet's engine's).
Prints requests/s, p50, p99 and the ratios to MLServer, and the issue's targets, met or not.

MLServer and LitServe are installed once into a virtual environment of their own (--peers-venv,
default ~/.cache/elunet-bench/peers-venv; needs PyPI): their dependencies must not change elunet's.

    python benchmarks/serve_peers.py                 # both models, 15 s per server
    python benchmarks/serve_peers.py --short         # fashion-cnn, 3 s per server: does it all run?
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from fixtures_serve import binary_infer_body, free_port, http, parse_infer_response  # noqa: E402
from grpc_load import grpc_load, infer_request  # noqa: E402
from serve_load import batch_totals, instance_count, make_repository, raw_engine  # noqa: E402
from figures import add_json_option, write_figures  # noqa: E402
from wrk_load import wrk  # noqa: E402

from elunet.repository import ModelRepository  # noqa: E402
from elunet.runtime.cpus import available_cpus, cpu_name  # noqa: E402

DEFAULT_VENV = Path.home() / ".cache" / "elunet-bench" / "peers-venv"
# The peers' releases measured (the issue's table was MLServer 1.7.1, LitServe 0.2.19).
# uvloop 0.22 broke MLServer 1.7's parallel inference workers (asyncio.get_event_loop() in a fresh process raises).
# Pillow for the image peer (benchmarks/image_classify.py), in elunet's own range: its wheels bring the same libjpeg-turbo.
PEER_PACKAGES = ("mlserver>=1.7,<1.8", "litserve>=0.2,<0.3", "onnxruntime", "numpy", "uvloop<0.22", "pillow>=13,<14")
# The exit status when the peers cannot be installed (no PyPI): the test skips on it.
NO_PEERS = 3
# The targets (float32, same run): elunet JSON over the faster MLServer layout, at a lower p99.
TARGET_JSON = {"fashion-cnn": 1.8, "elu-cifar11": 1.5}
TARGET_SERVED_RAW = {"elu-cifar11": 0.85}


class PeersUnavailable(Exception):
    pass


@dataclass
class Row:
    name: str
    requests_per_s: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0


def peers_python(venv: Path) -> Path:
    """The peers' interpreter, installing MLServer and LitServe into ``venv`` the first time."""
    python = venv / "bin" / "python"
    installed = venv / "elunet-peers.txt"  # what was installed, so that a change of PEER_PACKAGES reinstalls
    wanted = "\n".join(PEER_PACKAGES)
    if python.is_file() and installed.is_file() and installed.read_text() == wanted:
        return python
    print(f"installing {', '.join(PEER_PACKAGES)} into {venv} (once; a few minutes)", flush=True)
    steps = [[sys.executable, "-m", "venv", str(venv)], [str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode:
            raise PeersUnavailable(f"{' '.join(step[:4])} … failed (is PyPI reachable?):\n{done.stderr[-2000:]}")
    installed.write_text(wanted)
    return python


def peer_versions(python: Path) -> dict[str, str]:
    code = "import json, mlserver, litserve; print(json.dumps({'MLServer': mlserver.__version__, 'LitServe': litserve.__version__}))"
    return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout)


class Service:
    """A server in a session of its own, stopped as a group (the peers' workers are child processes).

    Each server has its own session because the Linux scheduler shares the CPU between sessions first
    (autogroup): a server in the benchmark's session would share one part with wrk, the others would not.
    The in-process ONNX Runtime figures are measured in a session of their own too (``--raw``).
    """

    def __init__(self, args: list[str], log: Path, ready_url: str, cwd: Path):
        self._log = open(log, "wb")
        self.log_path = log
        env = {**os.environ, "PYTHONPATH": str(HERE / "peers")}
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{args[1]} exited with {self.proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
            try:
                if http("GET", ready_url, timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{args[1]} not ready after 180 s:\n{log.read_text(errors='replace')[-4000:]}")

    def stop(self) -> None:
        """SIGTERM to the group, then SIGKILL to whatever of it is left, and wait until every process of the group
        has exited: a peer's workers outlive its main process, and one left computing would slow the next server."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + 30
        while group_alive(self.proc.pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes of {self.log_path.name}'s group still alive 30 s after SIGKILL")
            time.sleep(0.1)
        self._log.close()


def group_alive(pgid: int) -> bool:
    """Whether any process of this process group is left (zombies of other parents count: they hold nothing, but
    a process in exit is not yet a zombie)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def start_mlserver(python: Path, root: Path, name: str, onnx: Path, max_batch: int, delay_s: float, threads: int,
                   workers: int = 1) -> tuple[Service, str]:
    """MLServer with ``workers`` inference processes (its parallel_workers; 1 is its default), ``threads`` each."""
    port = free_port()
    (root / name).mkdir(parents=True)
    # debug off: MLServer's production setting (no access log), its fastest.
    (root / "settings.json").write_text(json.dumps({"host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
                                                    "metrics_port": free_port(), "debug": False, "parallel_workers": workers}))
    (root / name / "model-settings.json").write_text(json.dumps({
        "name": name, "implementation": "mlserver_onnx.OnnxRuntimeModel", "max_batch_size": max_batch, "max_batch_time": delay_s,
        "parameters": {"uri": str(onnx), "extra": {"intra_op_threads": threads}},
    }))
    url = f"http://127.0.0.1:{port}"
    mlserver = python.parent / "mlserver"
    return Service([str(mlserver), "start", str(root)], root / "mlserver.log", f"{url}/v2/models/{name}/ready", root), url


def start_litserve(python: Path, root: Path, name: str, onnx: Path, max_batch: int, delay_s: float, threads: int) -> tuple[Service, str]:
    port = free_port()
    root.mkdir(parents=True)
    args = [str(python), str(HERE / "peers" / "litserve_onnx.py"), "--model", str(onnx), "--name", name, "--port", str(port),
            "--max-batch-size", str(max_batch), "--batch-timeout", str(delay_s), "--threads", str(threads)]
    url = f"http://127.0.0.1:{port}"
    return Service(args, root / "litserve.log", f"{url}/health", root), url


def check_json_answer(url: str, name: str, body: bytes, expected: np.ndarray) -> None:
    status, _, answer = http("POST", f"{url}/v2/models/{name}/infer", body, {"Content-Type": "application/json"})
    if status != 200:
        raise RuntimeError(f"{url}: infer answered {status}: {answer[:500]!r}")
    got = np.asarray(json.loads(answer)["outputs"][0]["data"], dtype=np.float32).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=f"{url} answered other logits than ONNX Runtime")


def scheduling(url: str, name: str) -> tuple[int, float, int]:
    """(max batch size, queue delay in s, instances) that elunet serves the model with: the peers get the same batching."""
    config = json.loads(http("GET", f"{url}/v2/models/{name}/config")[2])
    return int(config["max_batch_size"]), int(config["dynamic_batching"].get("max_queue_delay_microseconds", 0)) / 1e6, instance_count(config)


def measure(architecture: str, tmp: Path, python: Path, versions: dict[str, str], args) -> list[Row]:
    """Every server twice, in mirrored order (elunet, peers; peers, elunet), ONNX Runtime alone in between:
    on a host whose foreign load drifts, each figure is the mean of two runs that straddle the same moment."""
    repository = make_repository(architecture, tmp / architecture)
    version = ModelRepository(repository).get(architecture)
    onnx = version.path / "model.onnx"
    image = np.random.default_rng(0).random((1, *version.card.input_shape), dtype=np.float32)
    json_body = json.dumps({"inputs": [{"name": "input", "shape": list(image.shape), "datatype": "FP32", "data": image.ravel().tolist()}]}).encode()
    json_headers = {"Content-Type": "application/json"}
    threads = available_cpus()
    expected = onnx_logits(onnx, image, threads)
    load = lambda url, body=json_body, headers=json_headers: wrk(  # noqa: E731
        f"{url}/v2/models/{architecture}/infer", body, headers, connections=args.connections, duration_s=args.duration)
    runs: dict[str, list] = {}
    elunet_figures: list[tuple[int, float, int, float, float]] = []  # max batch, delay, instances, formed batch, loop us
    paired_raw: list[float] = []  # raw img/s at the batch each elunet JSON run formed, measured right after it

    def elunet() -> None:
        print("  elunet serve (defaults)", flush=True)
        port, grpc_port = free_port(), free_port()
        url = f"http://127.0.0.1:{port}"
        server = Service([sys.executable, "-m", "elunet", "serve", "--repository", str(repository), "--host", "127.0.0.1", "--port", str(port),
                          "--grpc-port", str(grpc_port), "--allow-unverified", "true"], tmp / f"{architecture}-elunet.log", f"{url}/v2/health/ready", tmp)
        try:
            check_json_answer(url, architecture, json_body, expected)
            before, loop_before = batch_totals(url, architecture), main_thread_cpu_s(server.proc.pid)
            result = load(url)
            after, loop_after = batch_totals(url, architecture), main_thread_cpu_s(server.proc.pid)
            runs.setdefault("elunet JSON", []).append(result)
            formed = (after[1] - before[1]) / max(1.0, after[0] - before[0])
            elunet_figures.append((*scheduling(url, architecture), formed, 1e6 * (loop_after - loop_before) / (result.requests_per_s * args.duration)))
            # The ceiling measured right after the run it bounds (the server idle meanwhile): this host's speed drifts
            # by a quarter within minutes, and a ceiling measured minutes away would give a ratio of two moments.
            paired_raw.append(raw_in_own_session(version.path, max(1, round(formed)), args.duration / 2, elunet_figures[-1][2]))
            body, headers = binary_infer_body(image)
            status, answer_headers, answer = http("POST", f"{url}/v2/models/{architecture}/infer", body, headers)
            np.testing.assert_allclose(parse_infer_response(answer_headers, answer), expected, atol=1e-4)
            runs.setdefault("elunet binary", []).append(load(url, body, headers))
            grpc = grpc_load(f"127.0.0.1:{grpc_port}", infer_request(architecture, image), concurrency=args.connections, duration_s=args.duration)
            _check_grpc_answer(grpc.first_answer, expected)
            runs.setdefault("elunet gRPC (Python client)", []).append(grpc)
        finally:
            server.stop()

    def peer(name: str, variant: str, start, peer_threads: int, options: dict):
        def run() -> None:
            max_batch, delay_s = elunet_figures[0][:2]
            print(f"  {name} {versions[name]}{variant}", flush=True)
            process, url = start(python, tmp / f"{architecture}-{name}{len(runs)}-{sum(map(len, runs.values()))}", architecture, onnx,
                                 max_batch, delay_s, peer_threads, **options)
            try:
                check_json_answer(url, architecture, json_body, expected)
                runs.setdefault(f"{name} {versions[name]} JSON{variant}", []).append(load(url))
            finally:
                process.stop()
        return run

    # The peers' defaults, and MLServer laid out as elunet's two instances are on two CPUs (an inference process per CPU, one thread each).
    order = [elunet, peer("MLServer", "", start_mlserver, threads, {}),
             peer("MLServer", f", {threads} workers", start_mlserver, 1, {"workers": threads}), peer("LitServe", "", start_litserve, threads, {})]
    for target in order:
        target()
    max_batch, delay_s, instances = elunet_figures[0][:3]
    formed = max(1, round(elunet_figures[0][3]))
    print(f"  ONNX Runtime without a server, batch 1, {instances} instance(s) as served", flush=True)
    raw_1 = raw_in_own_session(version.path, 1, args.duration / 2, instances)
    for target in reversed(order):
        target()
    raw = [Row("raw ONNX Runtime, batch 1 (img/s)", raw_1), Row(f"raw ONNX Runtime, batch {formed} (img/s)", float(np.mean(paired_raw)))]

    rows = raw + [Row(name, *(float(np.mean([getattr(r, f) for r in results])) for f in ("requests_per_s", "p50_ms", "p99_ms")),
                      sum(r.errors for r in results)) for name, results in sorted(runs.items(), key=lambda kv: kv[0].startswith("elunet"))]
    print(f"\n{architecture} (input {'x'.join(map(str, version.card.input_shape))}): max batch {max_batch}, delay {delay_s * 1000:g} ms, "
          f"{args.connections} connections, {args.duration:g} s per run, mean of 2 runs each; elunet: {instances} instance(s), batches of "
          f"{' and '.join(f'{f[3]:.0f}' for f in elunet_figures)} formed, its event loop took "
          f"{' and '.join(f'{f[4]:.0f}' for f in elunet_figures)} us of CPU per JSON request")
    print("  runs (requests/s): " + "; ".join(f"{name} {' / '.join(f'{r.requests_per_s:.0f}' for r in results)}" for name, results in runs.items())
          + "; raw at the formed batch right after each elunet JSON run " + " / ".join(f"{r:.0f}" for r in paired_raw))
    served_raw = float(np.mean([r.requests_per_s / c for r, c in zip(runs["elunet JSON"], paired_raw)]))
    return {"rows": [asdict(r) for r in rows], "formed_batch": formed, "instances": instances, "served_over_raw": served_raw,
            **_print_table(architecture, rows, formed, served_raw)}


def main_thread_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process's main thread, the one that runs the event loop (Linux)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_in_own_session(version_dir: Path, batch: int, duration_s: float, instances: int) -> float:
    """Images/s of elunet's ONNX Runtime engine driven in a process (and session) of its own, as the server drives it:
    ``instances`` instances with their share of the CPUs, each computing batches of ``batch`` in a thread of its own."""
    done = subprocess.run([sys.executable, __file__, "--raw", str(version_dir), str(batch), str(duration_s), str(instances)],
                          capture_output=True, text=True, timeout=duration_s + 300, start_new_session=True)
    if done.returncode:
        raise RuntimeError(f"the raw ONNX Runtime run failed:\n{done.stderr[-4000:]}")
    return float(done.stdout.split()[-1])


def onnx_logits(onnx: Path, image: np.ndarray, threads: int) -> np.ndarray:
    sys.path.insert(0, str(HERE / "peers"))
    from peer_session import open_session

    session = open_session(str(onnx), threads)
    return session.run(["logits"], {"input": image})[0]


def _check_grpc_answer(answer: bytes, expected: np.ndarray) -> None:
    from tritonclient.grpc import service_pb2

    response = service_pb2.ModelInferResponse.FromString(answer)
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(expected.shape)
    np.testing.assert_allclose(got, expected, atol=1e-4, err_msg="elunet gRPC answered other logits than ONNX Runtime")


def _print_table(architecture: str, rows: list[Row], formed: int, served: float) -> dict:
    """Print the table and the targets; ``served``: elunet JSON over raw at the formed batch, the mean of each run's ratio
    to the ceiling measured after it. Returns the ratio to MLServer and whether each target was met."""
    by_name = {r.name: r for r in rows}
    mlserver = max((r for r in rows if r.name.startswith("MLServer")), key=lambda r: r.requests_per_s)  # its faster layout: the base
    print(f"  {'':<38}{'requests/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'x MLServer':>12}")
    for r in rows:
        if r.p99_ms is None:
            print(f"  {r.name:<38}{r.requests_per_s:>11.0f}")
        else:
            print(f"  {r.name:<38}{r.requests_per_s:>11.0f}{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}{r.errors:>8}"
                  f"{r.requests_per_s / mlserver.requests_per_s:>12.2f}")
    elunet = by_name["elunet JSON"]
    ratio = elunet.requests_per_s / mlserver.requests_per_s
    if architecture in TARGET_JSON:
        met = ratio >= TARGET_JSON[architecture] and elunet.p99_ms <= mlserver.p99_ms
        print(f"  elunet JSON / MLServer = {ratio:.2f} at p99 {elunet.p99_ms:.0f} vs {mlserver.p99_ms:.0f} ms "
              f"(target >= {TARGET_JSON[architecture]} at <= its p99): {'met' if met else 'NOT met'}")
    target = TARGET_SERVED_RAW.get(architecture)
    print(f"  elunet JSON / raw ONNX Runtime at batch {formed} = {served:.2f}"
          + (f" (target >= {target}): {'met' if served >= target else 'NOT met'}" if target else ""))
    return {"over_mlserver": ratio, "mlserver_base": mlserver.name,
            "json_target_met": met if architecture in TARGET_JSON else None, "served_raw_target_met": served >= target if target else None}


def main() -> int:
    if sys.argv[1:2] == ["--raw"]:  # raw_in_own_session's child
        version_dir, batch, duration, instances = Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
        image = np.random.default_rng(0).random(ModelRepository(version_dir.parent.parent).get(version_dir.parent.name).card.input_shape,
                                                dtype=np.float32)
        print(raw_engine(version_dir, "onnxruntime", "cpu", batch, image, duration, instances).images_per_s)
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="fashion-cnn,elu-cifar11", help="architectures, comma-separated")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per server")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (and gRPC calls in flight)")
    parser.add_argument("--short", action="store_true", help="fashion-cnn only, 3 s per server, no figures recorded: checks that everything runs")
    parser.add_argument("--peers-venv", type=Path, default=DEFAULT_VENV, help="virtual environment for MLServer and LitServe")
    add_json_option(parser, __file__)
    args = parser.parse_args()
    if args.short:
        args.models, args.duration, args.json = "fashion-cnn", 3.0, None
    try:
        python = peers_python(args.peers_venv)
    except PeersUnavailable as exc:
        print(f"peers unavailable: {exc}", file=sys.stderr)
        return NO_PEERS
    versions = peer_versions(python)
    print(f"{cpu_name()}, {available_cpus()} CPU(s), load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"MLServer {versions['MLServer']}, LitServe {versions['LitServe']}", flush=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve-peers-") as tmp:
        results = {}
        for architecture in args.models.split(","):
            print(f"{architecture}:", flush=True)
            results[architecture] = measure(architecture, Path(tmp), python, versions, args)
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    write_figures(args.json, {"peers": versions, "connections": args.connections, "duration_s": args.duration,
                              "load_average": {"start": load_before, "end": os.getloadavg()}, "models": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
