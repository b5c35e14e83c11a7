"""What the server counts: Triton's metrics (``nv_inference_*``, ``nv_cpu_*``) and its statistics extension,
both read from one set of counts.

Each model version's counts (``InferStats``, the fields of Triton's ModelStatistics) change under one
lock, all of a request's at once when it ends, and are read under it as a copy: a reader never sees a
request counted in one field and not yet in another (perf_analyzer aborts on "Server side statistics
compute counts must be the same"), and ``/metrics`` and ``/v2/models/stats`` read the same numbers.

Triton's families are published with its names, labels (``model``, ``version``; ``reason`` of a
failure), types and units (cumulative microseconds). ``elunet_inference_*`` families remain only
where Triton has no equivalent: formed batch sizes, the scheduling in force, per-instance executions.

Each app has its own registry, so several servers (e.g. in one test process) never share counters;
a model version's counts survive its reloads (``ServeMetrics.for_model`` returns the same object).
"""

from __future__ import annotations

import copy
import threading
import time
import weakref
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

PREFIX = "elunet_inference"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# TensorRT Inference Server's (Triton 1.x) buckets for nv_inference_load_ratio, which cloud dashboards still read.
LOAD_RATIO_BUCKETS = (1.25, 1.5, 2.0, 10.0, 100.0)
MODEL_LABELS = ("model", "version")

# Triton's failure reasons (the ``reason`` label of nv_inference_request_failure), and elunet's
# ServeError reasons that fall under each; every other reason (bad input, ...) is OTHER.
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
TRITON_REASON = {
    "queue_full": "REJECTED", "timeout": "REJECTED", "shutting_down": "REJECTED", "not_ready": "REJECTED",
    "cancelled": "CANCELED",
    "backend_error": "BACKEND",
}


@dataclass
class Duration:
    """Triton's StatisticDuration: how many, and their total nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += round(seconds * 1e9) * count

    @property
    def us(self) -> int:
        return self.ns // 1000


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class InferStats:
    """One model version's counts, in the fields of Triton's ModelStatistics (``failures``: by Triton reason)."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)  # no response cache: always 0, present as in Triton
    cache_miss: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0))
    batches: dict[int, BatchStats] = field(default_factory=dict)
    pending: int = 0  # requests waiting to be batched (nv_inference_pending_request_count)


# Triton's per-model families: (name, type, help, value read from a version's InferStats).
TRITON_MODEL_FAMILIES = (
    ("nv_inference_request_success", "counter", "Number of successful inference requests, all batch sizes", lambda s: s.success.count),
    ("nv_inference_count", "counter", "Number of inferences performed (does not include cached requests)", lambda s: s.inference_count),
    ("nv_inference_exec_count", "counter", "Number of model executions performed (does not include cached requests)",
     lambda s: s.execution_count),
    # Of successful requests, as Triton adds it (a failure counts in nv_inference_request_failure alone).
    ("nv_inference_request_duration_us", "counter", "Cumulative inference request duration in microseconds (includes cached requests)",
     lambda s: s.success.us),
    ("nv_inference_queue_duration_us", "counter", "Cumulative inference queuing duration in microseconds (includes cached requests)",
     lambda s: s.queue.us),
    ("nv_inference_compute_input_duration_us", "counter",
     "Cumulative compute input duration in microseconds (does not include cached requests)", lambda s: s.compute_input.us),
    ("nv_inference_compute_infer_duration_us", "counter",
     "Cumulative compute inference duration in microseconds (does not include cached requests)", lambda s: s.compute_infer.us),
    ("nv_inference_compute_output_duration_us", "counter",
     "Cumulative inference compute output duration in microseconds (does not include cached requests)", lambda s: s.compute_output.us),
    # TensorRT Inference Server's (Triton 1.x) name for the three above together, which cloud dashboards still read.
    ("nv_inference_compute_duration_us", "counter", "Cumulative inference compute duration in microseconds",
     lambda s: s.compute_input.us + s.compute_infer.us + s.compute_output.us),
    ("nv_inference_pending_request_count", "gauge", "Instantaneous number of pending requests awaiting execution per-model.",
     lambda s: s.pending),
)
FAILURE_FAMILY = ("nv_inference_request_failure", "counter", "Number of failed inference requests, all batch sizes")


class ServeMetrics:
    content_type = CONTENT_TYPE_PLAIN_0_0_4  # the text format Triton serves (prometheus-cpp), which every Prometheus reads

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # Every model version's InferStats change and are read under this one lock.
        self.lock = threading.Lock()
        ProcessCollector(registry=r)
        self.load_ratio = Histogram(
            "nv_inference_load_ratio", "Request time over compute time of each successful request (1: no time outside the engine)",
            MODEL_LABELS, buckets=LOAD_RATIO_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(f"{PREFIX}_batch_size", "Images per computed batch", MODEL_LABELS, buckets=BATCH_BUCKETS, registry=r)
        self.instance_exec_count = Counter(
            f"{PREFIX}_instance_exec_count", "Batches computed, by model instance", (*MODEL_LABELS, "instance"), registry=r
        )
        self.instance_overlaps = Gauge(
            f"{PREFIX}_instance_overlaps",
            "Batches refused because their instance was already computing (the scheduler guarantees 0)",
            (*MODEL_LABELS, "instance"),
            registry=r,
        )
        self.scheduling = Gauge(
            f"{PREFIX}_scheduling",
            "How each model version is scheduled (value 1; the settings are labels)",
            (*MODEL_LABELS, "max_batch_size", "max_queue_delay_us", "preferred_batch_sizes", "max_queue_size", "instances", "dynamic"),
            registry=r,
        )
        self._models: dict[tuple[str, int], ModelMetrics] = {}
        self._cpu = CpuUsage()

    def for_model(self, name: str, version: int) -> "ModelMetrics":
        key = (name, version)
        if key not in self._models:
            self._models[key] = ModelMetrics(self, name, str(version))
        return self._models[key]

    def stats(self, name: str | None = None, version: int | None = None) -> list[tuple[str, int, InferStats]]:
        """(name, version, a copy of its counts) of every model version that has counts, optionally one model's or version's;
        the copies are taken at one instant."""
        chosen = [(n, v, m) for (n, v), m in sorted(self._models.items()) if (name is None or n == name) and (version is None or v == version)]
        with self.lock:
            return [(n, v, copy.deepcopy(m.stats)) for n, v, m in chosen]

    def render(self) -> bytes:
        return generate_latest(self.registry) + self._triton_text()

    def _triton_text(self) -> bytes:
        """Triton's families in its exposition: counters named without the ``_total`` that prometheus_client's
        exposition always appends (a dashboard's ``rate(nv_inference_count[1m])`` must find them)."""
        entries = self.stats()
        lines: list[str] = []

        def family(name: str, kind: str, text: str, samples) -> None:
            lines.append(f"# HELP {name} {text}\n# TYPE {name} {kind}\n")
            lines.extend(f"{name}{{{_labels(labels)}}} {value}\n" if labels else f"{name} {value}\n" for labels, value in samples)

        for name, kind, text, read in TRITON_MODEL_FAMILIES:
            family(name, kind, text, [({"model": n, "version": str(v)}, read(s)) for n, v, s in entries])
        family(*FAILURE_FAMILY, [({"model": n, "reason": reason, "version": str(v)}, count)
                                 for n, v, s in entries for reason, count in s.failures.items()])
        utilization, total, used = self._cpu.read()
        family("nv_cpu_utilization", "gauge", "CPU utilization rate [0.0 - 1.0]", [({}, f"{utilization:.6g}")])
        family("nv_cpu_memory_total_bytes", "gauge", "CPU total memory (RAM), in bytes", [({}, total)])
        family("nv_cpu_memory_used_bytes", "gauge", "CPU used memory (RAM), in bytes", [({}, used)])
        return "".join(lines).encode()


def _labels(labels: dict[str, str]) -> str:
    escaped = {k: v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"") for k, v in labels.items()}
    return ",".join(f'{k}="{v}"' for k, v in sorted(escaped.items()))


class CpuUsage:
    """Triton's CPU metrics from /proc: the host's CPU utilization since the previous read (the first: since boot),
    its memory, and used memory as total less available."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = (0, 0)

    def read(self) -> tuple[float, int, int]:
        with open("/proc/stat") as f:
            ticks = [int(t) for t in f.readline().split()[1:]]
        idle = ticks[3] + ticks[4]  # idle and iowait
        with self._lock:
            busy_before, total_before = self._last
            self._last = (sum(ticks) - idle, sum(ticks))
            busy, total = self._last[0] - busy_before, self._last[1] - total_before
        memory = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                memory[key] = int(value.split()[0]) * 1024  # kB
        return (busy / total if total else 0.0), memory["MemTotal"], memory["MemTotal"] - memory["MemAvailable"]


class ModelMetrics:
    """The metrics of one model version; also the batcher's ``BatchObserver``."""

    def __init__(self, m: ServeMetrics, name: str, version: str):
        labels = (name, version)
        self._m = m
        self._labels = labels
        self.stats = InferStats()
        self._load_ratio = m.load_ratio.labels(*labels)
        self._batch = m.batch_size.labels(*labels)
        # per instance object: a reloaded version's new instances count from 0 again
        self._executions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._scheduling: tuple[str, ...] | None = None  # the labels of its elunet_inference_scheduling series

    # --- per request (serve/inference.py), each once, when the request ends ---

    def succeeded(self, images: int, request_s: float, input_s: float, queue_s: float, infer_s: float, output_s: float) -> None:
        """A request answered: its total time, decoding, waiting in the queue, its batch's engine time, encoding."""
        s = self.stats
        with self._m.lock:
            s.success.add(request_s)
            s.compute_input.add(input_s)
            s.queue.add(queue_s)
            s.compute_infer.add(infer_s)
            s.compute_output.add(output_s)
            s.inference_count += images
            s.last_inference_ms = int(time.time() * 1000)
        if infer_s > 0:
            self._load_ratio.observe(request_s / infer_s)

    def failed(self, reason: str, seconds: float) -> None:
        """A request that failed with elunet's ``reason`` (a ServeError's) after ``seconds``."""
        s = self.stats
        with self._m.lock:
            s.fail.add(seconds)
            s.failures[TRITON_REASON.get(reason, "OTHER")] += 1

    # --- per batch (the batcher) ---

    def queue_depth(self, requests: int) -> None:
        self.stats.pending = requests

    def computed(self, batch_size: int, input_s: float, infer_s: float, output_s: float) -> None:
        """A batch of ``batch_size`` images: gathering its inputs, the engine, splitting its outputs."""
        s = self.stats
        with self._m.lock:
            s.execution_count += 1
            batch = s.batches.setdefault(batch_size, BatchStats())
            batch.compute_input.add(input_s)
            batch.compute_infer.add(infer_s)
            batch.compute_output.add(output_s)
        self._batch.observe(batch_size)

    def instance_ran(self, instance) -> None:
        """Count the batches ``instance`` computed since it was last seen here, and its overlaps."""
        index = str(instance.index)
        done = instance.executions - self._executions.get(instance, 0)
        self._executions[instance] = instance.executions
        self._m.instance_exec_count.labels(*self._labels, index).inc(done)
        self._m.instance_overlaps.labels(*self._labels, index).set(instance.overlaps)

    def scheduled(self, s) -> None:
        """Publish the scheduling a version is served with (serve/scheduling.py's Scheduling), in place of
        what it was served with before a reload."""
        self.unscheduled()
        self._scheduling = (
            *self._labels,
            str(s.max_batch_size),
            str(round(s.max_queue_delay_s * 1e6)),
            ",".join(map(str, s.preferred_batch_sizes)),
            str(s.max_queue_size),
            str(s.instances),
            str(s.dynamic).lower(),
        )
        self._m.scheduling.labels(*self._scheduling).set(1)

    def unscheduled(self) -> None:
        """The version no longer serves: its scheduling series goes."""
        if self._scheduling is not None:
            self._m.scheduling.remove(*self._scheduling)
            self._scheduling = None


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 - the stdlib's signature
        """Scrapes every few seconds would flood the log."""


class MetricsPort:
    """Triton's metrics port (``--metrics-port``): ``/metrics`` alone, served from a thread, so a scrape is answered
    even while the event loop is saturated. The API key applies as on the HTTP port's ``/metrics``."""

    def __init__(self, metrics: ServeMetrics, host: str, port: int, path: str, key=None):
        self._metrics, self._path, self._key = metrics, path, key
        self._server = make_server(host, port, self._app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-port", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _app(self, environ, start_response):
        if environ["PATH_INFO"] != self._path:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [f"the metrics port serves {self._path} only\n".encode()]
        refusal = self._key.refusal(environ.get("HTTP_AUTHORIZATION", "").encode(), "the header 'Authorization") if self._key else None
        if refusal is not None:
            start_response(f"{refusal.status} Unauthorized", [("Content-Type", "text/plain"), *refusal.headers.items()])
            return [refusal.message.encode() + b"\n"]
        body = self._metrics.render()
        start_response("200 OK", [("Content-Type", self._metrics.content_type), ("Content-Length", str(len(body)))])
        return [body]
