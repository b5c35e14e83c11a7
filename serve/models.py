"""The served models: every version in the repository, its engine, instances, batcher and metrics.

Cards are read when the server starts (a broken repository fails at once);
each model's config.pbtxt is parsed as Triton's ModelConfig and decides how
the model is scheduled (serve/scheduling.py). Engines are opened, their
instances created and warmed up afterwards, in a thread, while the server
already answers liveness. A version is ready only once every instance ran
its warm-up batch. A config.pbtxt that contradicts its model leaves that
model UNAVAILABLE, with the differences as its reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np

from elunet.card import ModelCard
from elunet.errors import ElunetError
from elunet.model_config import TensorSignature, differences, read_config
from elunet.repository import CONFIG_FILE, MODEL_FILES, ModelRepository, ModelVersion, check_model_name
from elunet.runtime import Engine, Instance, open_engine
from elunet.runtime.choose import choose_engine
from elunet.runtime.cpus import available_cpus, threads_per_instance
from elunet.serve.batching import BackendFailure, DynamicBatcher
from elunet.serve.errors import ServeError, bad_request, not_found
from elunet.serve.metrics import ModelMetrics, ServeMetrics
from elunet.serve.scheduling import Scheduling, scheduling
from elunet.serve.settings import ServeSettings

log = logging.getLogger("elunet.serve")

LOADING, READY, UNAVAILABLE = "LOADING", "READY", "UNAVAILABLE"


@dataclass
class ServedModel:
    source: ModelVersion
    card: ModelCard
    metrics: ModelMetrics
    config: object | None  # the parsed config.pbtxt (ModelConfig), None without one
    scheduling: Scheduling | None
    state: str = LOADING
    reason: str = "loading"
    engine: Engine | None = None
    instances: list[Instance] = field(default_factory=list)
    batcher: DynamicBatcher | None = None
    loaded: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def version(self) -> int:
        return self.source.version

    @property
    def max_batch_size(self) -> int:
        return self.scheduling.max_batch_size if self.scheduling else 0

    def timeout(self, requested_us: float | None, server_timeout_s: float) -> float:
        """Seconds this request may take: the model's queue timeout, shortened by a request's own
        ``timeout`` parameter (microseconds, Triton's) where the queue policy allows that."""
        s = self.scheduling
        timeout = s.timeout_s if s else server_timeout_s
        if requested_us and (s is None or s.allow_timeout_override):
            timeout = min(timeout, requested_us / 1e6)
        return timeout

    async def predict(self, pixels: np.ndarray, timeout_s: float) -> np.ndarray:
        """Logits for ``pixels`` through the batcher; ServeError 503/504/500 when that fails."""
        if self.batcher is None or self.state != READY:
            raise ServeError(503, f"model {self.name} v{self.version} is not ready: {self.reason}", reason="not_ready", headers={"Retry-After": "1"})
        try:
            return await asyncio.wait_for(self.batcher.submit(pixels), timeout_s)
        except TimeoutError:
            raise ServeError(504, f"request not answered within {timeout_s:g} s (queue depth {self.batcher.depth})", reason="timeout") from None
        except BackendFailure as exc:
            raise ServeError(500, f"the engine failed on the batch holding this request: {exc}", reason="backend_error") from None


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
            config, problem = _read_model_config(repository, name)
            for version in repository.versions(name):
                served = ServedModel(
                    version, version.card, metrics.for_model(name, version.version), config, None if problem else scheduling(config, settings)
                )
                if problem:
                    served.state, served.reason = UNAVAILABLE, problem
                self.models.setdefault(name, {})[version.version] = served
        if not self.models:
            raise ElunetError(
                f"model repository {repository.root} holds no model versions",
                hint="expected ROOT/<name>/<version>/card.json; create them with `elunet export CKPT --repository DIR`",
            )
        # Every instance of every model shares the CPUs this process may use.
        self.total_instances = sum(m.scheduling.instances for m in self.all() if m.scheduling)
        self.cpu_threads = settings.cpu_threads or threads_per_instance(self.total_instances)

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
        """Open, check, warm up and start batching every version; failures leave that version UNAVAILABLE."""
        log.info("%d instance(s) in all share %d CPU(s): %d intra-op thread(s) each", self.total_instances, available_cpus(), self.cpu_threads)
        for served in self.all():
            if served.state == UNAVAILABLE:
                log.error("model %s v%d is unavailable: %s", served.name, served.version, served.reason)
                continue
            try:
                await asyncio.to_thread(self._open_and_warm_up, served)
            except Exception as exc:  # noqa: BLE001 - report any load failure on the model, keep serving the rest
                reason = exc.message if isinstance(exc, ElunetError) else f"{type(exc).__name__}: {exc}"
                served.state, served.reason = UNAVAILABLE, reason
                log.error("model %s v%d failed to load: %s", served.name, served.version, reason)
                self._release(served)
                continue
            s = served.scheduling
            served.batcher = DynamicBatcher(
                served.instances,
                max_batch_size=s.max_batch_size,
                max_queue_delay_s=s.max_queue_delay_s,
                max_queue_size=s.max_queue_size,
                preferred_batch_sizes=s.preferred_batch_sizes,
                dynamic=s.dynamic,
                observer=served.metrics,
                name=f"{served.name}-{served.version}",
            )
            served.metrics.scheduled(s)
            served.state, served.reason = READY, ""
            e = served.engine
            log.info("model %s v%d ready: %s on %s (%s): %s", served.name, served.version, e.kind, e.device, e.name, s.describe())

    def _open_and_warm_up(self, served: ServedModel) -> None:
        started = time.perf_counter()
        s = self.settings
        choice = choose_engine(served.source, s.backend, s.device)
        if choice.why and s.backend == "auto":
            log.info("model %s v%d: auto picked %s on %s: %s", served.name, served.version, choice.kind, choice.device, choice.why)
        engine = served.engine = open_engine(
            choice.kind, choice.path, device=choice.device, cpu_threads=self.cpu_threads, max_batch_size=served.scheduling.max_batch_size
        )
        self._check_agrees(served, engine)
        served.instances = [engine.create_instance() for _ in range(served.scheduling.instances)]
        # Run the largest and the smallest batch on every instance: allocators, kernel selection and
        # lazy initialisation happen here instead of in the first users' requests.
        card = served.card
        for instance in served.instances:
            for n in sorted({served.max_batch_size, 1}, reverse=True):
                logits = instance.infer(np.zeros((n, *card.input_shape), np.float32))
                if logits.shape != (n, card.num_classes):
                    raise ElunetError(
                        f"warm-up of {served.name} v{served.version}: logits shape {logits.shape}, expected {(n, card.num_classes)}",
                        hint="the model file and its card.json disagree; re-export the model",
                    )
        log.info("model %s v%d: %d instance(s) warmed up in %.2f s", served.name, served.version, len(served.instances), time.perf_counter() - started)

    def _check_agrees(self, served: ServedModel, engine: Engine) -> None:
        """The model file, its card and its config.pbtxt must describe the same model."""
        card, s = served.card, served.scheduling
        found = []
        for kind, actual, expected in (
            ("input", engine.input, TensorSignature(engine.input.name, engine.input.datatype, tuple(card.input_shape))),
            ("output", engine.output, TensorSignature(engine.output.name, engine.output.datatype, (card.num_classes,))),
        ):
            if actual.dims != expected.dims:
                found.append(f"the model file's {kind} dims are {list(actual.dims)}, card.json says {list(expected.dims)}")
        if served.config is not None:
            held = [p for p, file in MODEL_FILES.items() if (served.source.path / file).is_file()]
            found += differences(served.config, name=served.name, platforms=held, inputs=[engine.input], outputs=[engine.output])
        if engine.max_batch_size and s.max_batch_size > engine.max_batch_size:
            if s.source.get("max_batch_size") == "config.pbtxt":
                found.append(f"max_batch_size is {s.max_batch_size}, the model file accepts at most {engine.max_batch_size}")
            else:
                served.scheduling = s = replace(s, max_batch_size=engine.max_batch_size)
        if found:
            raise ElunetError(f"{CONFIG_FILE}, card.json and the model file of {served.name} disagree: " + "; ".join(found))

    @staticmethod
    def _release(served: ServedModel) -> None:
        for instance in served.instances:
            instance.close()
        served.instances = []
        if served.engine is not None:
            served.engine.close()
            served.engine = None

    async def close(self) -> None:
        """Answer everything queued, then release the engines."""
        for served in self.all():
            if served.batcher is not None:
                await served.batcher.close()
            self._release(served)
            served.state, served.reason = UNAVAILABLE, "server stopped"


def _read_model_config(repository: ModelRepository, name: str):
    """(parsed config.pbtxt or None, the reason it cannot be used or None)."""
    path = repository.model_dir(name) / CONFIG_FILE
    if not path.is_file():
        return None, None
    try:
        return read_config(path), None
    except ElunetError as exc:
        return None, f"{CONFIG_FILE}: {exc.message.replace(str(path), CONFIG_FILE)}"
