"""The decoding workers against the inference threads on this machine: their count, their priority, the transfer
of the upload and of the pixels, and what streaming the upload could save. Measured, paired, in one run.

Served (benchmarks/image_classify.py's 1080p JPEG on an untrained elu-cifar11 export, wrk with 16 connections on
/v1/models/M/classify), one server after the other, each variant once per round, the rounds in alternating order
(A B C D, D C B A, ...), so that each variant's mean straddles the same moments of a drifting host:

- the defaults: one decoding worker process per CPU, at nice +10 (serve/decoding.py);
- the same workers at nice 0 (the benchmark renices the server's child processes once it is ready: what a
  WORKER_NICE of 0 would do to them);
- one decoding worker fewer and one more (--decode-workers).

For each: images/s, p50, p99, the batch size formed, and the event loop's CPU time per request (the server's main
thread). Then, in this process, against the time one decode takes (decode_image of the same JPEG):

- transfer: a round trip through a one-worker process pool (forkserver, as the server's) with the upload vs with
  no bytes, and returning the pixels vs nothing: the most shared memory could save per request;
- streaming: Starlette's multipart parsing of the request (Request.form, fed in uvicorn's 64 KiB chunks, then the
  file read), which the event loop does before the decode starts: the most that handing the upload to the decoder
  as it arrives could save (on loopback the body itself arrives at once).

    python benchmarks/image_decoding_ab.py              # 2 rounds of 10 s per variant (about 5 minutes)
    python benchmarks/image_decoding_ab.py --variants defaults,nice0 --rounds 4 --json ''   # a trial: no figures recorded

The figures go to docs/benchmarks/image_decoding_ab.json, for the docs' benchmark page.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from figures import add_json_option, write_figures  # noqa: E402
from image_classify import CONNECTIONS, photo_jpeg, start_elunet, test_images  # noqa: E402
from serve_load import batch_totals, make_repository  # noqa: E402
from serve_peers import main_thread_cpu_s  # noqa: E402
from test_serve_classify import multipart  # noqa: E402
from wrk_load import wrk  # noqa: E402

from elunet.images import decode_image  # noqa: E402
from elunet.repository import ModelRepository  # noqa: E402
from elunet.runtime.cpus import available_cpus, cpu_name  # noqa: E402

MODEL = "elu-cifar11"
ROUND_TRIPS = 300
# uvicorn's read size: the body reaches the app in chunks of this many bytes.
CHUNK = 65536


def session_children(session: int) -> list[int]:
    """Processes of a session other than its leader (the server's decoding workers and their fork server)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            if int(fields[3]) == session and pid != session:
                found.append(pid)
    return found


def served(repository: Path, tmp: Path, variant: str, options: list[str], nice: int | None, body: bytes, headers: dict, args) -> dict:
    server, url = start_elunet(repository, tmp / f"{variant}.log", *options)
    try:
        if nice is not None:
            for pid in session_children(server.proc.pid):
                os.setpriority(os.PRIO_PROCESS, pid, nice)
        before, loop_before = batch_totals(url, MODEL), main_thread_cpu_s(server.proc.pid)
        result = wrk(f"{url}/v1/models/{MODEL}/classify", body, headers, connections=args.connections, duration_s=args.duration)
        after, loop_after = batch_totals(url, MODEL), main_thread_cpu_s(server.proc.pid)
    finally:
        server.stop()
    requests = result.requests_per_s * args.duration
    return {"images_per_s": result.requests_per_s, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms, "errors": result.errors,
            "formed_batch": (after[1] - before[1]) / max(1.0, after[0] - before[0]), "loop_ms_per_request": 1e3 * (loop_after - loop_before) / requests}


def _echo(data: bytes, pixels: bool):
    return np.zeros((1, 3, 32, 32), np.float32) if pixels else len(data), time.process_time()


def _attach(name: str, pixels: bool):
    memory = shared_memory.SharedMemory(name)
    memory.close()
    return _echo(b"", pixels)


def _via_shared_memory(pool: ProcessPoolExecutor, data: bytes, pixels: bool):
    """The upload copied into shared memory and its name sent instead: what the server would do per request."""
    memory = shared_memory.SharedMemory(create=True, size=max(1, len(data)))
    try:
        memory.buf[:len(data)] = data
        return pool.submit(_attach, memory.name, pixels).result()
    finally:
        memory.close()
        memory.unlink()


def round_trip_ms(pool: ProcessPoolExecutor, data: bytes, pixels: bool, shared: bool = False) -> tuple[float, float]:
    """(wall, CPU) ms per round trip; CPU: this process's (the executor's threads pickle and write) and the worker's."""
    call = _via_shared_memory if shared else lambda pool, data, pixels: pool.submit(_echo, data, pixels).result()
    for _ in range(20):
        _, worker_start = call(pool, data, pixels)
    t0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(ROUND_TRIPS):
        _, worker_end = call(pool, data, pixels)
    cpu = time.process_time() - cpu0 + worker_end - worker_start
    return 1e3 * (time.perf_counter() - t0) / ROUND_TRIPS, 1e3 * cpu / ROUND_TRIPS


def form_parse_ms(body: bytes, headers: dict) -> float:
    from starlette.requests import Request

    async def parse_once() -> None:
        chunks = [body[i:i + CHUNK] for i in range(0, len(body), CHUNK)]

        async def receive():
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        scope = {"type": "http", "method": "POST", "path": "/", "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
        form = await Request(scope, receive).form()
        (upload,) = [v for _, v in form.multi_items() if not isinstance(v, str)]
        await upload.read()
        await form.close()

    async def many() -> float:
        for _ in range(20):
            await parse_once()
        t0 = time.perf_counter()
        for _ in range(ROUND_TRIPS):
            await parse_once()
        return 1e3 * (time.perf_counter() - t0) / ROUND_TRIPS

    return asyncio.run(many())


def in_process(data: bytes, body: bytes, headers: dict, pre) -> dict:
    for _ in range(5):
        decode_image(data, pre.color_mode, pre.width, pre.height, pre.channels)
    t0 = time.perf_counter()
    for _ in range(50):
        decode_image(data, pre.color_mode, pre.width, pre.height, pre.channels)
    decode_ms = 1e3 * (time.perf_counter() - t0) / 50
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as pool:
        empty, upload, back = round_trip_ms(pool, b"", False), round_trip_ms(pool, data, False), round_trip_ms(pool, b"", True)
        shared = round_trip_ms(pool, data, False, shared=True)
    return {"decode_ms": decode_ms, "round_trip_empty_ms": empty[0], "upload_transfer_ms": upload[0] - empty[0],
            "upload_transfer_cpu_ms": upload[1] - empty[1], "upload_shared_memory_ms": shared[0] - empty[0],
            "upload_shared_memory_cpu_ms": shared[1] - empty[1], "pixels_transfer_ms": back[0] - empty[0], "pixels_transfer_cpu_ms": back[1] - empty[1],
            "form_parse_ms": form_parse_ms(body, headers)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; every other one in the mirrored order")
    parser.add_argument("--connections", type=int, default=CONNECTIONS, help="wrk connections")
    parser.add_argument("--variants", default="defaults,nice0,fewer,more", help="which, comma-separated; the first is the base of the ratios")
    add_json_option(parser, __file__)
    args = parser.parse_args()
    cpus = available_cpus()
    variants = {"defaults": (f"defaults ({cpus} workers, nice +10)", [], None), "nice0": (f"{cpus} workers at nice 0", [], 0),
                "fewer": (f"{max(1, cpus - 1)} worker(s)", ["--decode-workers", str(max(1, cpus - 1))], None),
                "more": (f"{cpus + 1} workers", ["--decode-workers", str(cpus + 1)], None)}
    variants = {key: variants[key] for key in args.variants.split(",")}
    load_start = os.getloadavg()
    print(f"{cpu_name()}, {cpus} CPU(s), load average {' '.join(f'{x:.2f}' for x in load_start)}", flush=True)
    data = photo_jpeg(test_images())
    body, headers = multipart([("image", data)])
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in variants.values()}
    with tempfile.TemporaryDirectory(prefix="image-decoding-ab-") as tmp:
        repository = make_repository(MODEL, Path(tmp) / MODEL)
        pre = ModelRepository(repository).get(MODEL).card.preprocessing
        for round_ in range(args.rounds):
            for key in list(variants) if round_ % 2 == 0 else reversed(variants):
                name, options, nice = variants[key]
                runs[name].append(served(repository, Path(tmp), key, options, nice, body, headers, args))
                print(f"  round {round_ + 1}: {name}: {runs[name][-1]['images_per_s']:.1f} images/s", flush=True)
        costs = in_process(data, body, headers, pre)
    print(f"\n{MODEL}, 1920x1080 JPEG of {len(data):,} bytes, {args.connections} connections, {args.duration:g} s per run, "
          f"{args.rounds} rounds (alternating order)")
    print(f"  {'':<32}{'images/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'batch':>7}{'loop ms/req':>12}{'x defaults':>11}")
    base = np.mean([r["images_per_s"] for r in next(iter(runs.values()))])
    variants_figures = []
    for name, results in runs.items():
        mean = {k: float(np.mean([r[k] for r in results])) for k in results[0]}
        variants_figures.append({"variant": name, **mean, "over_first": mean["images_per_s"] / base,
                                 "per_round": [r["images_per_s"] for r in results]})
        print(f"  {name:<32}{mean['images_per_s']:>9.1f}{mean['p50_ms']:>9.1f}{mean['p99_ms']:>9.1f}{mean['formed_batch']:>7.1f}"
              f"{mean['loop_ms_per_request']:>12.2f}{mean['images_per_s'] / base:>11.2f}   per round: "
              + " / ".join(f"{r['images_per_s']:.0f}" for r in results))
    print(f"  in this process: one decode {costs['decode_ms']:.2f} ms; pool round trip {costs['round_trip_empty_ms']:.3f} ms, "
          f"+{costs['upload_transfer_ms']:.3f} ms ({costs['upload_transfer_cpu_ms']:.3f} ms of CPU) with the upload, "
          f"+{costs['pixels_transfer_ms']:.3f} ms ({costs['pixels_transfer_cpu_ms']:.3f} ms of CPU) with the pixels back, "
          f"+{costs['upload_shared_memory_ms']:.3f} ms ({costs['upload_shared_memory_cpu_ms']:.3f} ms of CPU) with the upload in shared memory; "
          f"multipart parsing {costs['form_parse_ms']:.3f} ms")
    print(f"  transfer CPU / decode = {(costs['upload_transfer_cpu_ms'] + costs['pixels_transfer_cpu_ms']) / costs['decode_ms']:.3f}; "
          f"multipart parsing / decode = {costs['form_parse_ms'] / costs['decode_ms']:.3f}")
    load_end = os.getloadavg()
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in load_end)}")
    write_figures(args.json, {"model": MODEL, "image_bytes": len(data), "connections": args.connections, "duration_s": args.duration,
                              "rounds": args.rounds, "load_average": {"start": load_start, "end": load_end}, "variants": variants_figures,
                              "in_process_ms": costs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
