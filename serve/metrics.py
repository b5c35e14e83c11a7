"""Prometheus metrics, named in the spirit of Triton's ``nv_inference_*`` family.

Each app has its own registry, so several servers (e.g. in one test process)
never share counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "elunet_inference"
# Seconds: from sub-millisecond CPU batches to multi-second overload.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MODEL_LABELS = ("model", "version")


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_success = Counter(f"{PREFIX}_request_success", "Inference requests answered successfully", MODEL_LABELS, registry=r)
        self.request_failure = Counter(
            f"{PREFIX}_request_failure", "Inference requests that failed, by reason", (*MODEL_LABELS, "reason"), registry=r
        )
        self.inference_count = Counter(f"{PREFIX}_count", "Images inferred (a request may carry several)", MODEL_LABELS, registry=r)
        self.exec_count = Counter(f"{PREFIX}_exec_count", "Batches computed by the backend", MODEL_LABELS, registry=r)
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds", "Request time from parsed body to answer", MODEL_LABELS, buckets=DURATION_BUCKETS, registry=r
        )
        self.queue_duration = Histogram(
            f"{PREFIX}_queue_duration_seconds", "Time a request waited in the batching queue", MODEL_LABELS, buckets=DURATION_BUCKETS, registry=r
        )
        self.compute_duration = Histogram(
            f"{PREFIX}_compute_infer_duration_seconds", "Backend time per batch", MODEL_LABELS, buckets=DURATION_BUCKETS, registry=r
        )
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

    def for_model(self, name: str, version: int) -> "ModelMetrics":
        return ModelMetrics(self, name, str(version))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ModelMetrics:
    """The metrics of one model version; also the batcher's ``BatchObserver``."""

    def __init__(self, m: ServeMetrics, name: str, version: str):
        labels = (name, version)
        self._m = m
        self._labels = labels
        self._success = m.request_success.labels(*labels)
        self._count = m.inference_count.labels(*labels)
        self._exec = m.exec_count.labels(*labels)
        self._request = m.request_duration.labels(*labels)
        self._queue = m.queue_duration.labels(*labels)
        self._compute = m.compute_duration.labels(*labels)
        self._batch = m.batch_size.labels(*labels)
        self._depth = m.queue_depth_gauge.labels(*labels)
        self._executions: dict[str, int] = {}

    def succeeded(self, images: int, seconds: float) -> None:
        self._success.inc()
        self._count.inc(images)
        self._request.observe(seconds)

    def failed(self, reason: str, seconds: float) -> None:
        self._m.request_failure.labels(*self._labels, reason).inc()
        self._request.observe(seconds)

    def queue_depth(self, requests: int) -> None:
        self._depth.set(requests)

    def queued(self, seconds: float) -> None:
        self._queue.observe(seconds)

    def computed(self, batch_size: int, seconds: float) -> None:
        self._exec.inc()
        self._batch.observe(batch_size)
        self._compute.observe(seconds)

    def instance_ran(self, instance) -> None:
        """Count the batches ``instance`` computed since it was last seen here, and its overlaps."""
        index = str(instance.index)
        done = instance.executions - self._executions.get(index, 0)
        self._executions[index] = instance.executions
        self._m.instance_exec_count.labels(*self._labels, index).inc(done)
        self._m.instance_overlaps.labels(*self._labels, index).set(instance.overlaps)

    def scheduled(self, s) -> None:
        """Publish the scheduling a version is served with (serve/scheduling.py's Scheduling)."""
        self._m.scheduling.labels(
            *self._labels,
            str(s.max_batch_size),
            str(round(s.max_queue_delay_s * 1e6)),
            ",".join(map(str, s.preferred_batch_sizes)),
            str(s.max_queue_size),
            str(s.instances),
            str(s.dynamic).lower(),
        ).set(1)
