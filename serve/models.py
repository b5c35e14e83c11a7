"""The served models: every version in the repository, its backend, batcher and metrics.

Cards are read when the server starts (a broken repository fails at once);
backends are opened and warmed up afterwards, in a thread, while the server
already answers liveness. A version is ready only once its warm-up batch ran.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass, field

import numpy as np

from elunet.card import ModelCard
from elunet.errors import ElunetError
from elunet.repository import CONFIG_FILE, ModelRepository, ModelVersion, check_model_name
from elunet.serve.backends import Backend, open_backend
from elunet.serve.batching import BackendFailure, DynamicBatcher
from elunet.serve.errors import ServeError, bad_request, not_found
from elunet.serve.metrics import ModelMetrics, ServeMetrics
from elunet.serve.settings import ServeSettings

log = logging.getLogger("elunet.serve")

LOADING, READY, UNAVAILABLE = "LOADING", "READY", "UNAVAILABLE"
# Triton's config.pbtxt field; 0 means the model does not batch.
_MAX_BATCH_RE = re.compile(r"^\s*max_batch_size\s*:\s*(\d+)", re.MULTILINE)


@dataclass
class ServedModel:
    source: ModelVersion
    card: ModelCard
    metrics: ModelMetrics
    state: str = LOADING
    reason: str = "loading"
    backend: Backend | None = None
    batcher: DynamicBatcher | None = None
    max_batch_size: int = 0
    loaded: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def version(self) -> int:
        return self.source.version

    async def predict(self, pixels: np.ndarray, timeout_s: float) -> np.ndarray:
        """Logits for ``pixels`` through the batcher; ServeError 503/504/500 when that fails."""
        if self.batcher is None or self.state != READY:
            raise ServeError(503, f"model {self.name} v{self.version} is not ready: {self.reason}", reason="not_ready", headers={"Retry-After": "1"})
        try:
            return await asyncio.wait_for(self.batcher.submit(pixels), timeout_s)
        except TimeoutError:
            raise ServeError(504, f"request not answered within {timeout_s:g} s (queue depth {self.batcher.depth})", reason="timeout") from None
        except BackendFailure as exc:
            raise ServeError(500, f"the backend failed on the batch holding this request: {exc}", reason="backend_error") from None


class ModelRegistry:
    def __init__(self, settings: ServeSettings, metrics: ServeMetrics):
        self.settings = settings
        repository = ModelRepository(settings.repository)
        if not repository.root.is_dir():
            raise ElunetError(f"model repository {repository.root} does not exist", hint="create it with `elunet export CKPT --repository DIR`")
        available = repository.models()
        unknown = sorted(set(settings.models or []) - set(available))
        if unknown:
            raise ElunetError(
                f"--models names {unknown}, which model repository {repository.root} does not hold",
                hint=f"models there: {', '.join(available) or 'none'}",
            )
        self.models: dict[str, dict[int, ServedModel]] = {}
        for name in settings.models or available:
            for version in repository.versions(name):
                card = version.card
                served = ServedModel(version, card, metrics.for_model(name, version.version))
                self.models.setdefault(name, {})[version.version] = served
        if not self.models:
            raise ElunetError(
                f"model repository {repository.root} holds no model versions",
                hint="expected ROOT/<name>/<version>/card.json; create them with `elunet export CKPT --repository DIR`",
            )

    def all(self) -> list[ServedModel]:
        return [m for versions in self.models.values() for m in versions.values()]

    @property
    def ready(self) -> bool:
        return all(m.state == READY for m in self.all())

    def resolve(self, name: str, version: str | None = None) -> ServedModel:
        """The model version a URL names (the newest when no version is given); 400/404 otherwise."""
        try:
            check_model_name(name)
        except ElunetError as exc:
            raise bad_request(f"{exc.message}; {exc.hint}") from None
        versions = self.models.get(name)
        if not versions:
            raise not_found(f"unknown model {name!r}; served models: {', '.join(sorted(self.models))}")
        if version is None or version == "":
            return versions[max(versions)]
        if not version.isdigit() or int(version) not in versions:
            raise not_found(f"model {name!r} has no version {version!r}; versions: {', '.join(map(str, sorted(versions)))}")
        return versions[int(version)]

    async def load_all(self) -> None:
        """Open, warm up and start batching every version; failures leave that version UNAVAILABLE."""
        for served in self.all():
            try:
                backend = await asyncio.to_thread(self._open_and_warm_up, served)
            except Exception as exc:  # noqa: BLE001 - report any load failure on the model, keep serving the rest
                served.state, served.reason = UNAVAILABLE, f"{type(exc).__name__}: {exc}"
                log.error("model %s v%d failed to load: %s", served.name, served.version, served.reason)
                continue
            s = self.settings
            served.backend = backend
            served.batcher = DynamicBatcher(
                backend.infer,
                max_batch_size=served.max_batch_size,
                max_queue_delay_s=s.max_queue_delay_ms / 1000.0,
                max_queue_size=s.max_queue_size,
                workers=s.workers,
                observer=served.metrics,
                name=f"{served.name}-{served.version}",
            )
            served.state, served.reason = READY, ""
            log.info(
                "model %s v%d ready: %s on %s (%s), max batch %d",
                served.name, served.version, backend.kind, backend.device, backend.detail, served.max_batch_size,
            )

    def _open_and_warm_up(self, served: ServedModel) -> Backend:
        started = time.perf_counter()
        # The server's limit, capped by config.pbtxt (e.g. a TensorRT engine's optimisation profile) ...
        wanted = min(limit for limit in (self.settings.max_batch_size, _config_max_batch(served.source)) if limit)
        backend = open_backend(served.source, self.settings.backend, self.settings.device, wanted, cpu_threads_per_worker(self.settings.workers))
        # ... and by what the model file itself accepts (a fixed batch dimension).
        served.max_batch_size = min(limit for limit in (wanted, backend.max_batch_size) if limit)
        # Run the largest and the smallest batch once: allocators, kernel selection and
        # lazy initialisation happen here instead of in the first user's request.
        for n in sorted({served.max_batch_size, 1}, reverse=True):
            logits = backend.infer(np.zeros((n, *served.card.input_shape), np.float32))
            if logits.shape != (n, served.card.num_classes):
                raise ElunetError(
                    f"warm-up of {served.name} v{served.version}: logits shape {logits.shape}, expected {(n, served.card.num_classes)}",
                    hint="the model file and its card.json disagree; re-export the model",
                )
        log.info("model %s v%d warmed up in %.2f s", served.name, served.version, time.perf_counter() - started)
        return backend

    async def close(self) -> None:
        """Answer everything queued, then release the backends."""
        for served in self.all():
            if served.batcher is not None:
                await served.batcher.close()
            if served.backend is not None:
                served.backend.close()
            served.state, served.reason = UNAVAILABLE, "server stopped"


def cpu_threads_per_worker(workers: int) -> int:
    """Each inference worker gets its share of the CPU cores.

    Letting every concurrent inference use all cores oversubscribes them, and the
    thread pools' spin-waiting then collapses throughput (measured with torch on a
    busy 2-core host: 6 images/s with 2 threads per inference, 401 with 1).
    """
    return max(1, (os.cpu_count() or 1) // workers)


def _config_max_batch(version: ModelVersion) -> int | None:
    config = version.path.parent / CONFIG_FILE
    if not config.is_file():
        return None
    match = _MAX_BATCH_RE.search(config.read_text())
    return int(match.group(1)) if match and int(match.group(1)) > 0 else None
