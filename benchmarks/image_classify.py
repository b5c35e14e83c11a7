"""Photos classified through `elunet serve`, against the same algorithm without a server and against a LitServe peer.

Two cases, each on a freshly initialised network of its architecture exported by elunet into a temporary
repository (an untrained export: speed does not depend on the weights):

- elu-cifar11 (3x32x32) and a 1920x1080 JPEG made from real images: 32 Fashion-MNIST test images, each
  upscaled (bicubic) into a 240x270 tile, tinted, laid over a colour gradient, with Gaussian noise (sigma 10)
  over the whole picture, saved at quality 90: it compresses as a photo does (about 700 KB);
- fashion-cnn (1x28x28) and a 28x28 PNG: one Fashion-MNIST test image as it is.

For each case, one after the other on 127.0.0.1, each server started only after every process of the one
before has exited:

- served: `elunet serve` with its defaults; wrk (16 connections) POSTs the image to /v1/models/M/classify as
  multipart/form-data (the route's fastest form: base64 JSON is a third larger and is decoded on the event loop);
- ceiling: the same algorithm without a server: one process per CPU (as many as the server's decoding
  workers), each decoding with elunet's decode_image (JPEG draft mode, early reduce) and running elunet's ONNX
  Runtime engine (one thread) at the batch size the server formed;
- full-decode ceiling: the same, decoding every pixel with Pillow (benchmarks/peers/pillow_decode.py: convert,
  bilinear resize with reducing_gap=3), the decode before issue 29;
- peer: LitServe (benchmarks/peers/litserve_classify.py) with the same decode as elunet's (elunet/images.py, imported
  from the checkout: the fastest decode, so the peer's fastest configuration) and ONNX Runtime, its
  batching on with elunet's max batch size and queue delay, with 1 and with 2 inference workers
  (workers_per_device; ONNX Runtime threads: the CPUs over the workers); the faster is its figure.

Every server's answer is first checked against the decode and ONNX Runtime run here (probabilities within 1e-4).
Each round runs all of them; the second round runs them in the mirrored order, so that on a host whose load
drifts each figure is the mean of two runs straddling the same moment; served/ceiling is the mean of each
round's ratio. The load average is printed at the start and the end: on a shared host the figures are noisy, and
served can even exceed its ceiling there, since Linux shares the CPUs between sessions first (autogroup) and a served
run spans two (the server's, and wrk's in the benchmark's) where a ceiling run has one.

    python benchmarks/image_classify.py            # both cases, 2 rounds of 10 s per run (about 8 minutes)
    python benchmarks/image_classify.py --short    # 1 round of 2 s per run: does it all run? (writes no JSON)

LitServe and Pillow for it come from the peers' virtual environment (benchmarks/serve_peers.py's peers_python).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))
sys.path.insert(0, str(HERE.parent / "tests"))
from figures import add_json_option, write_figures  # noqa: E402
from fixtures_serve import free_port, http  # noqa: E402
from pillow_decode import full_decode  # noqa: E402
from serve_load import batch_totals, instance_count, make_repository  # noqa: E402
from serve_peers import DEFAULT_VENV, NO_PEERS, PeersUnavailable, Row, Service, onnx_logits, peers_python, peer_versions  # noqa: E402
from test_serve_classify import multipart  # noqa: E402
from wrk_load import wrk  # noqa: E402

from elunet.images import decode_image  # noqa: E402
from elunet.repository import ModelRepository  # noqa: E402
from elunet.runtime.cpus import available_cpus, cpu_name  # noqa: E402
from elunet.serve.images import softmax  # noqa: E402

PHOTO = (1920, 1080)
TILES = (8, 4)  # Fashion-MNIST images across and down the photo
NOISE_SIGMA = 10.0
CASES = {"elu-cifar11": "1920x1080 JPEG", "fashion-cnn": "28x28 PNG"}
CONNECTIONS = 16
# The targets for the photo: images/s on 2 CPUs, and served over its ceiling; and ahead of the peer.
TARGET_IMAGES_PER_S = {"elu-cifar11": 120.0}
TARGET_OVER_CEILING = {"elu-cifar11": 0.8}
DECODES = {"draft": "elunet decode_image", "full": "Pillow full decode"}


def test_images() -> np.ndarray:
    from elunet.train.data import load_dataset

    return load_dataset("fashion-mnist", "test").images[: TILES[0] * TILES[1]].numpy()[:, 0]


def photo_jpeg(images: np.ndarray) -> bytes:
    """A 1080p JPEG that compresses like a photo, made from real pictures (the module's docstring says how)."""
    from PIL import Image

    width, height = PHOTO
    tile_w, tile_h = width // TILES[0], height // TILES[1]
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    gradient = 0.6 * x / width + 0.4 * y / height
    canvas = np.stack([base + span * gradient for base, span in ((40, 120), (90, 60), (150, 30))], axis=-1)
    for k, image in enumerate(images):
        row, col = divmod(k, TILES[0])
        tile = np.asarray(Image.fromarray(image).resize((tile_w, tile_h), Image.Resampling.BICUBIC), np.float32)[..., None] / 255
        region = canvas[row * tile_h:(row + 1) * tile_h, col * tile_w:(col + 1) * tile_w]
        region[:] = region * (1 - tile) + 255 * tile * rng.uniform(0.4, 1.0, 3)
    noisy = np.clip(canvas + rng.normal(0, NOISE_SIGMA, canvas.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(noisy).save(out, "JPEG", quality=90)
    return out.getvalue()


def small_png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, "PNG")
    return out.getvalue()


def pixels(decode: str, data: bytes, pre) -> np.ndarray:
    if decode == "draft":
        return decode_image(data, pre.color_mode, pre.width, pre.height, pre.channels)
    return full_decode(data, pre.color_mode, pre.width, pre.height)


# --- the ceiling: the algorithm without a server, in a session of its own --------------------------


def ceiling(version_dir: Path, image_file: Path, decode: str, batch: int, processes: int, duration_s: float) -> float:
    """Images/s of ``processes`` processes, each decoding ``batch`` images and running them as one batch, in a loop."""
    done = subprocess.run([sys.executable, __file__, "--ceiling", str(version_dir), str(image_file), decode, str(batch), str(processes),
                           str(duration_s)], capture_output=True, text=True, timeout=duration_s + 300, start_new_session=True)
    if done.returncode:
        raise RuntimeError(f"the ceiling run failed:\n{done.stderr[-4000:]}")
    return float(done.stdout.split()[-1])


def _ceiling_process(version_dir: str, image_file: str, decode: str, batch: int, duration_s: float, start, counts) -> None:
    from elunet.runtime import open_engine
    from elunet.runtime.choose import choose_engine

    version = ModelRepository(Path(version_dir).parent.parent).get(Path(version_dir).parent.name, int(Path(version_dir).name))
    pre = version.card.preprocessing
    choice = choose_engine(version, "onnxruntime", "cpu")
    engine = open_engine(choice.kind, choice.path, device=choice.device, cpu_threads=1, max_batch_size=batch)
    model = engine.create_instance()
    data = Path(image_file).read_bytes()
    for _ in range(3):
        model.infer(np.stack([pixels(decode, data, pre) for _ in range(batch)]))
    start.wait()
    done, t_end = 0, time.monotonic() + duration_s
    while time.monotonic() < t_end:
        model.infer(np.stack([pixels(decode, data, pre) for _ in range(batch)]))
        done += batch
    counts.put(done)
    engine.close()


def _ceiling_main(version_dir: str, image_file: str, decode: str, batch: str, processes: str, duration: str) -> None:
    context = multiprocessing.get_context("spawn")
    start, counts = context.Barrier(int(processes) + 1), context.Queue()
    workers = [context.Process(target=_ceiling_process, args=(version_dir, image_file, decode, int(batch), float(duration), start, counts))
               for _ in range(int(processes))]
    for worker in workers:
        worker.start()
    start.wait()
    total = sum(counts.get() for _ in workers)
    for worker in workers:
        worker.join()
    print(total / float(duration))


# --- the servers ---------------------------------------------------------------------------------------


def start_elunet(repository: Path, log: Path, *options: str) -> tuple[Service, str]:
    """`elunet serve` with its defaults, but for ``options``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return Service([sys.executable, "-m", "elunet", "serve", "--repository", str(repository), "--host", "127.0.0.1", "--port", str(port),
                    "--grpc-port", str(free_port()), "--allow-unverified", "true", "--log-level", "warning", *options], log,
                   f"{url}/v2/health/ready", log.parent), url


def start_litserve(python: Path, onnx: Path, labels: Path, name: str, pre, max_batch: int, delay_s: float, workers: int,
                   log: Path) -> tuple[Service, str]:
    port = free_port()
    args = [str(python), str(HERE / "peers" / "litserve_classify.py"), "--model", str(onnx), "--name", name, "--labels", str(labels),
            "--color-mode", pre.color_mode, "--width", str(pre.width), "--height", str(pre.height), "--port", str(port),
            "--max-batch-size", str(max_batch), "--batch-timeout", str(delay_s), "--threads", str(max(1, available_cpus() // workers)),
            "--workers", str(workers)]
    url = f"http://127.0.0.1:{port}"
    return Service(args, log, f"{url}/health", log.parent), url


def check_answer(url: str, name: str, body: bytes, headers: dict, expected: np.ndarray) -> None:
    """The server's top 5 are those of ``expected`` (probabilities of one image), within 1e-4."""
    status, _, answer = http("POST", f"{url}/v1/models/{name}/classify", body, headers)
    if status != 200:
        raise RuntimeError(f"{url}: classify answered {status}: {answer[:500]!r}")
    (prediction,) = json.loads(answer)["predictions"]
    got = np.array([[top["index"], top["probability"]] for top in prediction["top"]])
    np.testing.assert_allclose(got[:, 1], np.sort(expected)[::-1][: len(got)], atol=1e-4, err_msg=f"{url} answered other probabilities")
    if got[0, 0] != expected.argmax():
        raise AssertionError(f"{url} answered top-1 {got[0, 0]:.0f}, ONNX Runtime here {expected.argmax()}")


def measure(architecture: str, data: bytes, tmp: Path, python: Path, args) -> dict:
    repository = make_repository(architecture, tmp / architecture)
    version = ModelRepository(repository).get(architecture)
    pre, onnx = version.card.preprocessing, version.path / "model.onnx"
    image_file, labels_file = tmp / f"{architecture}.image", tmp / f"{architecture}-labels.json"
    image_file.write_bytes(data)
    labels_file.write_text(json.dumps(version.card.labels))
    expected = {d: softmax(onnx_logits(onnx, pixels(d, data, pre)[None], 1))[0] for d in DECODES}
    body, headers = multipart([("image", data)])
    url_path = f"/v1/models/{architecture}/classify"
    runs: dict[str, list[Row]] = {}
    served: dict = {}  # the serving figures of the first elunet run: the peers and the ceilings take them
    processes = available_cpus()  # the server's decoding workers: one per CPU

    def load(name: str, url: str) -> None:
        # One image per request: its requests/s are images/s.
        result = wrk(url + url_path, body, headers, connections=args.connections, duration_s=args.duration)
        runs.setdefault(name, []).append(Row(name, result.requests_per_s, result.p50_ms, result.p99_ms, result.errors))

    def elunet() -> None:
        print("  elunet serve (defaults)", flush=True)
        server, url = start_elunet(repository, tmp / f"{architecture}-elunet.log")
        try:
            check_answer(url, architecture, body, headers, expected["draft"])
            before = batch_totals(url, architecture)
            load("elunet serve", url)
            after = batch_totals(url, architecture)
            config = json.loads(http("GET", f"{url}/v2/models/{architecture}/config")[2])
        finally:
            server.stop()
        served.setdefault("max_batch", int(config["max_batch_size"]))
        served.setdefault("delay_s", int(config["dynamic_batching"].get("max_queue_delay_microseconds", 0)) / 1e6)
        served.setdefault("instances", instance_count(config))
        served.setdefault("formed", []).append((after[1] - before[1]) / max(1.0, after[0] - before[0]))

    def ceiling_run(decode: str):
        def run() -> None:
            batch = max(1, round(served["formed"][0]))
            print(f"  ceiling: {DECODES[decode]}, batch {batch}, {processes} processes", flush=True)
            rate = ceiling(version.path, image_file, decode, batch, processes, args.duration)
            runs.setdefault(f"ceiling, {DECODES[decode]}", []).append(Row(f"ceiling, {DECODES[decode]}", rate))
        return run

    def peer(workers: int):
        def run() -> None:
            print(f"  LitServe, {workers} worker(s)", flush=True)
            server, url = start_litserve(python, onnx, labels_file, architecture, pre, served["max_batch"], served["delay_s"], workers,
                                         tmp / f"{architecture}-litserve-{workers}.log")
            try:
                check_answer(url, architecture, body, headers, expected["draft"])
                load(f"LitServe {args.litserve}, {workers} worker(s)", url)
            finally:
                server.stop()
        return run

    order = [elunet, ceiling_run("draft"), ceiling_run("full"), peer(1), peer(2)]
    for round_ in range(args.rounds):
        for target in order if round_ % 2 == 0 else reversed(order):
            target()
    rows = []
    for name, results in runs.items():
        mean = {f: float(np.mean([getattr(r, f) for r in results])) if results[0].p99_ms is not None or f == "requests_per_s" else None
                for f in ("requests_per_s", "p50_ms", "p99_ms")}
        rows.append(Row(name, **mean, errors=sum(r.errors for r in results)))
    return _report(architecture, pre, len(data), runs, rows, served)


def _report(architecture: str, pre, size: int, runs: dict[str, list[Row]], rows: list[Row], served: dict) -> dict:
    by_name = {r.name: r for r in rows}
    elunet, draft, full = by_name["elunet serve"], by_name[f"ceiling, {DECODES['draft']}"], by_name[f"ceiling, {DECODES['full']}"]
    peer = max((r for r in rows if r.name.startswith("LitServe")), key=lambda r: r.requests_per_s)
    # Each round's served figure over the ceiling of the same round: the host's drift between rounds cancels.
    over_ceiling = float(np.mean([s.requests_per_s / c.requests_per_s for s, c in zip(runs["elunet serve"], runs[draft.name])]))
    figures = {"image": CASES[architecture], "image_bytes": size, "input": f"{pre.channels}x{pre.height}x{pre.width}",
               "max_batch_size": served["max_batch"], "queue_delay_ms": served["delay_s"] * 1000, "instances": served["instances"],
               "formed_batch": float(np.mean(served["formed"])), "served_over_ceiling": over_ceiling,
               "served_over_peer": elunet.requests_per_s / peer.requests_per_s, "peer": peer.name,
               "draft_over_full_ceiling": draft.requests_per_s / full.requests_per_s}
    print(f"\n{architecture} ({figures['input']}), {CASES[architecture]} of {size:,} bytes: max batch {served['max_batch']}, "
          f"delay {figures['queue_delay_ms']:g} ms, {served['instances']} instance(s), batches of "
          f"{' and '.join(f'{f:.1f}' for f in served['formed'])} formed")
    print("  runs (images/s): " + "; ".join(f"{name} {' / '.join(f'{r.requests_per_s:.0f}' for r in results)}" for name, results in runs.items()))
    print(f"  {'':<40}{'images/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for r in rows:
        latency = f"{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}{r.errors:>8}" if r.p99_ms is not None else ""
        print(f"  {r.name:<40}{r.requests_per_s:>9.1f}{latency}")
    print(f"  served / ceiling = {over_ceiling:.2f}; served / peer ({peer.name}) = {figures['served_over_peer']:.2f}; "
          f"draft / full ceiling = {figures['draft_over_full_ceiling']:.2f}")
    met = {}
    if architecture in TARGET_IMAGES_PER_S:
        met = {"images_per_s": elunet.requests_per_s >= TARGET_IMAGES_PER_S[architecture],
               "over_ceiling": over_ceiling >= TARGET_OVER_CEILING[architecture], "over_peer": elunet.requests_per_s > peer.requests_per_s}
        print(f"  targets: >= {TARGET_IMAGES_PER_S[architecture]:g} images/s: {'met' if met['images_per_s'] else 'NOT met'}; "
              f">= {TARGET_OVER_CEILING[architecture]} x ceiling: {'met' if met['over_ceiling'] else 'NOT met'}; "
              f"ahead of the peer: {'met' if met['over_peer'] else 'NOT met'}")
    return {**figures, "rows": [asdict(r) for r in rows], "targets_met": met or None}


def main() -> int:
    if sys.argv[1:2] == ["--ceiling"]:  # ceiling()'s child
        _ceiling_main(*sys.argv[2:8])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(CASES), help="architectures, comma-separated")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every run, each after the first in the mirrored order")
    parser.add_argument("--connections", type=int, default=CONNECTIONS, help="wrk connections")
    parser.add_argument("--short", action="store_true", help="1 round of 2 s per run, no figures recorded: checks that everything runs")
    parser.add_argument("--peers-venv", type=Path, default=DEFAULT_VENV, help="virtual environment for LitServe")
    add_json_option(parser, __file__)
    args = parser.parse_args()
    if args.short:
        args.duration, args.rounds, args.json = 2.0, 1, None
    try:
        python = peers_python(args.peers_venv)
    except PeersUnavailable as exc:
        print(f"peers unavailable: {exc}", file=sys.stderr)
        return NO_PEERS
    args.litserve = peer_versions(python)["LitServe"]
    load_start = os.getloadavg()
    print(f"{cpu_name()}, {available_cpus()} CPU(s), load average {' '.join(f'{x:.2f}' for x in load_start)}; LitServe {args.litserve}",
          flush=True)
    images = test_images()
    files = {"elu-cifar11": photo_jpeg(images), "fashion-cnn": small_png(images[0])}
    results = {}
    with tempfile.TemporaryDirectory(prefix="image-classify-") as tmp:
        for architecture in args.models.split(","):
            print(f"{architecture}, {CASES[architecture]}:", flush=True)
            results[architecture] = measure(architecture, files[architecture], Path(tmp), python, args)
    load_end = os.getloadavg()
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in load_end)}")
    write_figures(args.json, {"litserve": args.litserve, "connections": args.connections, "duration_s": args.duration,
                              "rounds": args.rounds, "load_average": {"start": load_start, "end": load_end}, "models": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
