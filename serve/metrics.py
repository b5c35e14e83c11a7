"""What the server counts: Prometheus metrics, and the same counts as Triton's statistics extension.

Prometheus names are elunet's (``elunet_inference_*``); deploy/prometheus-triton-rules.yml derives
Triton's ``nv_inference_*`` families from them, so a Triton dashboard reads them unchanged. The
statistics extension (``GET /v2/models/…/stats``, gRPC ``ModelStatistics``) reads ``InferStats``, kept
beside the Prometheus children by the same calls, so the two can never disagree.

Each app has its own registry, so several servers (e.g. in one test process) never share counters;
a model version's counts survive its reloads (``ServeMetrics.for_model`` returns the same object).
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "elunet_inference"
# Seconds: from sub-millisecond CPU batches to multi-second overload.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MODEL_LABELS = ("model", "version")


@dataclass
class Duration:
    """Triton's StatisticDuration: how many, and their total nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += round(seconds * 1e9) * count


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class InferStats:
    """One model version's counts, in the fields of Triton's ModelStatistics."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchStats] = field(default_factory=dict)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry

        def histogram(name: str, text: str) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", text, MODEL_LABELS, buckets=DURATION_BUCKETS, registry=r)

        self.request_success = Counter(f"{PREFIX}_request_success", "Inference requests answered successfully", MODEL_LABELS, registry=r)
        self.request_failure = Counter(
            f"{PREFIX}_request_failure", "Inference requests that failed, by reason", (*MODEL_LABELS, "reason"), registry=r
        )
        self.inference_count = Counter(f"{PREFIX}_count", "Images inferred (a request may carry several)", MODEL_LABELS, registry=r)
        self.exec_count = Counter(f"{PREFIX}_exec_count", "Batches computed by the engine", MODEL_LABELS, registry=r)
        self.request_duration = histogram("request_duration_seconds", "Request time from received body to answer")
        self.queue_duration = histogram("queue_duration_seconds", "Time a request waited in the batching queue")
        self.compute_input_duration = histogram("compute_input_duration_seconds", "Time a request's body took to become input arrays")
        self.compute_duration = histogram("compute_infer_duration_seconds", "Engine time per batch")
        self.request_compute = Counter(
            f"{PREFIX}_request_compute_infer_seconds", "Engine time summed over requests (each request of a batch counts it), as Triton sums it",
            MODEL_LABELS, registry=r,
        )
        self.compute_output_duration = histogram("compute_output_duration_seconds", "Time a request's outputs took to become its response")
        self.batch_size = Histogram(f"{PREFIX}_batch_size", "Images per computed batch", MODEL_LABELS, buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth_gauge = Gauge(f"{PREFIX}_queue_depth", "Requests waiting to be batched", MODEL_LABELS, registry=r)
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

    def for_model(self, name: str, version: int) -> "ModelMetrics":
        key = (name, version)
        if key not in self._models:
            self._models[key] = ModelMetrics(self, name, str(version))
        return self._models[key]

    def stats(self, name: str | None = None, version: int | None = None) -> list[tuple[str, int, InferStats]]:
        """(name, version, counts) of every model version that has counts, optionally one model's or version's."""
        return [
            (n, v, m.stats)
            for (n, v), m in sorted(self._models.items())
            if (name is None or n == name) and (version is None or v == version)
        ]

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ModelMetrics:
    """The metrics of one model version; also the batcher's ``BatchObserver``."""

    def __init__(self, m: ServeMetrics, name: str, version: str):
        labels = (name, version)
        self._m = m
        self._labels = labels
        self.stats = InferStats()
        self._success = m.request_success.labels(*labels)
        self._count = m.inference_count.labels(*labels)
        self._exec = m.exec_count.labels(*labels)
        self._request = m.request_duration.labels(*labels)
        self._queue = m.queue_duration.labels(*labels)
        self._input = m.compute_input_duration.labels(*labels)
        self._compute = m.compute_duration.labels(*labels)
        self._request_compute = m.request_compute.labels(*labels)
        self._output = m.compute_output_duration.labels(*labels)
        self._batch = m.batch_size.labels(*labels)
        self._depth = m.queue_depth_gauge.labels(*labels)
        # per instance object: a reloaded version's new instances count from 0 again
        self._executions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._scheduling: tuple[str, ...] | None = None  # the labels of its elunet_inference_scheduling series

    # --- per request (the HTTP and gRPC handlers) ---

    def decoded(self, seconds: float) -> None:
        self.stats.compute_input.add(seconds)
        self._input.observe(seconds)

    def encoded(self, seconds: float) -> None:
        self.stats.compute_output.add(seconds)
        self._output.observe(seconds)

    def succeeded(self, images: int, seconds: float) -> None:
        self.stats.success.add(seconds)
        self.stats.inference_count += images
        self.stats.last_inference_ms = int(time.time() * 1000)
        self._success.inc()
        self._count.inc(images)
        self._request.observe(seconds)

    def failed(self, reason: str, seconds: float) -> None:
        self.stats.fail.add(seconds)
        self._m.request_failure.labels(*self._labels, reason).inc()
        self._request.observe(seconds)

    # --- per batch (the batcher) ---

    def queue_depth(self, requests: int) -> None:
        self._depth.set(requests)

    def queued(self, seconds: float) -> None:
        self.stats.queue.add(seconds)
        self._queue.observe(seconds)

    def computed(self, batch_size: int, requests: int, input_s: float, infer_s: float, output_s: float) -> None:
        """A batch of ``batch_size`` images from ``requests`` requests: gathering its inputs, the engine, splitting its outputs."""
        stats = self.stats
        stats.execution_count += 1
        stats.compute_infer.add(infer_s, requests)  # each request of the batch spent that long computing
        batch = stats.batches.setdefault(batch_size, BatchStats())
        batch.compute_input.add(input_s)
        batch.compute_infer.add(infer_s)
        batch.compute_output.add(output_s)
        self._exec.inc()
        self._batch.observe(batch_size)
        self._compute.observe(infer_s)
        self._request_compute.inc(infer_s * requests)

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
