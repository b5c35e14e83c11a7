"""The served models: a live model repository, managed as Triton's model control modes manage one.

Every model version that serves is a ``ServedModel``: its interface, its scheduling
(config.pbtxt, serve/scheduling.py), its engine and instances, its batcher.
What the registry loads depends on ``--model-control-mode``:

- ``none``: what the repository holds at start;
- ``poll``: the repository is scanned every ``--repository-poll-secs``: new
  versions load, removed ones unload, changed ones reload (what the files say,
  serve/repository_watch.py);
- ``explicit``: only what ``--load-model`` or the load API names.

A request without a version goes to the highest version that is ready.

Loading a version (serve/loader.py) runs in a thread while the server
answers. A version that replaces another takes traffic only once it is
ready; the one it replaces answers the requests it already has, then closes and
frees its memory. A load that fails leaves what served before serving, and its
reason in the index and the log. One model that fails never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import numpy as np

from elunet.errors import ElunetError
from elunet.repository import ModelRepository, ModelVersion, check_model_name, parse_version
from elunet.runtime import Engine, Instance
from elunet.runtime.cpus import available_cpus
from elunet.serve.batching import BackendFailure, DynamicBatcher, RequestTiming
from elunet.serve.errors import ServeError, bad_request, not_found
from elunet.serve.interface import ModelInterface
from elunet.serve.loader import load
from elunet.serve.metrics import ModelMetrics, ServeMetrics
from elunet.serve.repository_watch import Desired, RepositoryWatch, return_memory
from elunet.serve.scheduling import Scheduling, cpu_threads_per_instance, scheduling
from elunet.serve.settings import ServeSettings

log = logging.getLogger("elunet.serve")

LOADING, READY, UNAVAILABLE = "LOADING", "READY", "UNAVAILABLE"
# How long a replaced or unloaded version may take to answer the requests it has, on top of the request timeout.
RETIRE_SLACK_S = 5.0


@dataclass
class ServedModel:
    source: ModelVersion
    metrics: ModelMetrics
    config: object | None  # the parsed config.pbtxt (ModelConfig), None without one
    scheduling: Scheduling
    fingerprint: str
    failed_reload: str | None = None  # the fingerprint of files that failed to replace this version: not retried until they change
    interface: ModelInterface | None = None  # what it takes and answers, once loaded (serve/interface.py)
    state: str = LOADING
    reason: str = "loading"
    parity: str = "passed"  # or "unverified" (served under --allow-unverified: no passed certificate, or a plain Triton model)
    engine: Engine | None = None
    instances: list[Instance] = field(default_factory=list)
    batcher: DynamicBatcher | None = None
    active: int = 0  # requests that resolved this version and are not answered yet
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def version(self) -> int:
        return self.source.version

    @property
    def max_batch_size(self) -> int:
        return self.scheduling.max_batch_size

    def __enter__(self) -> "ServedModel":
        self.active += 1
        self._idle.clear()
        return self

    def __exit__(self, *exc) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    def timeout(self, requested_us: float | None) -> float | None:
        """Seconds this request may take (None: no limit): the model's queue timeout, shortened by a request's own
        ``timeout`` parameter (microseconds, Triton's) where the queue policy allows that."""
        s = self.scheduling
        if not (requested_us and s.allow_timeout_override):
            return s.timeout_s
        return requested_us / 1e6 if s.timeout_s is None else min(s.timeout_s, requested_us / 1e6)

    def check_ready(self) -> None:
        """ServeError 503 unless this version takes requests (checked before any decoding work)."""
        if self.batcher is None or self.state != READY:
            raise ServeError(503, f"model {self.name} v{self.version} is not ready: {self.reason}", reason="not_ready", headers={"Retry-After": "1"})

    async def predict(self, pixels: np.ndarray, timeout_s: float | None, timing: RequestTiming | None = None) -> np.ndarray:
        """Logits for ``pixels`` through the batcher (``timeout_s`` None: no limit; ``timing``: filled in with
        its time in the queue and the engine); ServeError 503/504/500 when that fails."""
        self.check_ready()
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for runs submit() in a task of its own, a turn
            # of the event loop later, which hands the batcher a burst of requests only after the whole burst.
            async with asyncio.timeout(timeout_s):
                return await self.batcher.submit(pixels, timing)
        except TimeoutError:
            raise ServeError(504, f"request not answered within {timeout_s:g} s (queue depth {self.batcher.depth})", reason="timeout") from None
        except BackendFailure as exc:
            raise ServeError(500, f"the engine failed on the batch holding this request: {exc}", reason="backend_error") from None

    async def retire(self, wait_s: float) -> None:
        """Answer the requests this version has (new ones no longer reach it), then release it."""
        if self.active:
            try:
                await asyncio.wait_for(self._idle.wait(), wait_s)
            except TimeoutError:
                log.warning("model %s v%d: %d request(s) still open after %g s; closing it anyway", self.name, self.version, self.active, wait_s)
        if self.batcher is not None:
            await self.batcher.close()
        self.release()
        self.state, self.reason = UNAVAILABLE, "unloaded"

    def release(self) -> None:
        for instance in self.instances:
            instance.close()
        self.instances = []
        if self.engine is not None:
            self.engine.close()
            self.engine = None


class ModelRegistry:
    def __init__(self, settings: ServeSettings, metrics: ServeMetrics):
        self.settings = settings
        self.metrics = metrics
        self.repository = ModelRepository(settings.repository)
        self.watch = RepositoryWatch(self.repository)
        root = self.repository.root
        if not root.is_dir():
            raise ElunetError(f"model repository {root} does not exist", hint="create it with `elunet export CKPT --repository DIR`")
        self.mode = settings.model_control_mode
        available = self.repository.models()
        if self.mode == "explicit":
            wanted = settings.load_model or []
            self.requested = set(available if wanted == ["*"] else wanted)
        else:
            self.requested = set(settings.models or available)
        unknown = sorted(self.requested - set(available))
        if unknown and self.mode != "poll":
            option = "--load-model" if self.mode == "explicit" else "--models"
            raise ElunetError(
                f"{option} names {unknown}, which model repository {root} does not hold", hint=f"models there: {', '.join(available) or 'none'}"
            )
        if self.mode == "none" and not self.requested:
            raise ElunetError(
                f"model repository {root} holds no model versions",
                hint="expected ROOT/<name>/<version>/ with model.onnx and card.json (or, for a plain Triton model, ROOT/<name>/config.pbtxt); "
                "create them with `elunet export CKPT --repository DIR`, or start with --model-control-mode poll to wait for them",
            )
        self.models: dict[str, dict[int, ServedModel]] = {}
        self.problems: dict[str, str] = {}  # model-level reasons (config.pbtxt unreadable, no versions, ...)
        self.cpu_threads = settings.cpu_threads or 1
        self._lock = asyncio.Lock()
        self._started = False
        self._retiring: set[asyncio.Task] = set()

    # --- what serves -----------------------------------------------------------------

    def all(self) -> list[ServedModel]:
        return [m for versions in self.models.values() for m in versions.values()]

    def readiness(self) -> tuple[bool, list[str]]:
        """(ready, why not): every requested model ready (``--strict-readiness``), or at least one."""
        waiting = []
        ready_models = 0
        for name in sorted(self.requested):
            versions = self.models.get(name, {})
            problems = [f"{name} v{m.version}: {m.state} {m.reason}" for m in versions.values() if m.state != READY]
            if not versions:
                problems.append(f"{name}: {self.problems.get(name, 'not loaded')}")
            waiting += problems
            ready_models += any(m.state == READY for m in versions.values())
        if self.settings.strict_readiness:
            return not waiting, waiting
        return ready_models > 0 or not self.requested, waiting

    def resolve(self, name: str, version: str | None = None) -> ServedModel:
        """The model version a URL names (the highest ready one when no version is given); 400/404/503 otherwise.

        Use the result as a context manager around the request, so that a version being replaced
        answers it before it closes.
        """
        try:
            check_model_name(name)
        except ElunetError as exc:
            raise bad_request(f"{exc.message}; {exc.hint}") from None
        versions = self.models.get(name)
        if not versions:
            served = f"served models: {', '.join(sorted(self.models)) or 'none'}"
            if name in self.requested:
                why = self.problems.get(name, "not loaded yet")
                raise ServeError(503, f"model {name!r} is not available: {why}; {served}", reason="not_ready", headers={"Retry-After": "1"})
            if self.repository.model_dir(name).is_dir():
                raise not_found(f"model {name!r} is in the repository but not loaded ({self._how_to_load(name)}); {served}")
            raise not_found(f"unknown model {name!r}; {served}")
        if version is None or version == "":
            ready = [v for v, m in versions.items() if m.state == READY]
            return versions[max(ready or versions)]
        number = parse_version(version)
        if number not in versions:
            raise not_found(f"model {name!r} has no version {version!r} being served; versions: {', '.join(map(str, sorted(versions)))}")
        return versions[number]

    def _how_to_load(self, name: str) -> str:
        if self.mode == "explicit":
            return f"load it with POST /v2/repository/models/{name}/load"
        return "the server's --models leaves it out" if self.settings.models else "it was unloaded"

    def index(self, ready_only: bool = False) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) for every model of the repository and every version served."""
        rows = []
        for name in sorted(set(self.repository.models()) | set(self.models) | set(self.problems)):
            versions = self.models.get(name, {})
            for v, m in sorted(versions.items()):
                rows.append((name, str(v), m.state, m.reason))
            if not versions:
                rows.append((name, "", UNAVAILABLE, self.problems.get(name, "unloaded" if name not in self.requested else "not loaded")))
        return [r for r in rows if r[2] == READY] if ready_only else rows

    # --- loading and unloading -------------------------------------------------------------

    async def start(self) -> None:
        """Load what the mode asks for at start (every requested model, concurrently with serving liveness)."""
        desired = {name: await asyncio.to_thread(self.watch.desired, name) for name in sorted(self.requested)}
        planned = [scheduling(d.config, self.settings) for d in desired.values() for _ in d.versions]
        self.cpu_threads = cpu_threads_per_instance(self.settings, planned)
        automatic = any(s.automatic for s in planned)
        log.info("%d instance(s) in all%s share %d CPU(s): %d intra-op thread(s) each", sum(s.planned_instances for s in planned),
                 " (automatic counts at their most)" if automatic else "", available_cpus(), self.cpu_threads)
        async with self._lock:
            for name, want in desired.items():
                await self._sync(name, want)
            self._started = True

    async def poll_forever(self) -> None:
        """Poll mode: bring the served models in line with the repository every ``repository_poll_secs``."""
        while True:
            await asyncio.sleep(self.settings.repository_poll_secs)
            try:
                names = set(self.settings.models or self.repository.models()) | set(self.models)
                async with self._lock:
                    for name in sorted(names):
                        if self.settings.models and name not in self.settings.models:
                            continue
                        self.requested.add(name)
                        await self._sync(name, await asyncio.to_thread(self.watch.desired, name))
            except Exception:  # noqa: BLE001 - a failed poll must not end polling
                log.exception("polling the model repository failed; trying again in %g s", self.settings.repository_poll_secs)

    async def load(self, name: str, config_override=None) -> None:
        """Explicit mode: load or reload every version of ``name`` its policy selects; ServeError 400 if it fails."""
        self._check_explicit("load")
        check_model_name(name)
        async with self._lock:
            want = await asyncio.to_thread(self.watch.desired, name, config_override)
            if want.problem and not self.repository.model_dir(name).is_dir():
                raise bad_request(f"failed to load {name!r}: no such model in the repository; models there: {', '.join(self.repository.models()) or 'none'}")
            self.requested.add(name)
            failures = await self._sync(name, want, force=True)
        if failures:
            raise bad_request(f"failed to load {name!r}: " + "; ".join(failures))

    async def unload(self, name: str) -> None:
        """Explicit mode: stop serving every version of ``name``."""
        self._check_explicit("unload")
        check_model_name(name)
        async with self._lock:
            self.requested.discard(name)
            self.problems.pop(name, None)
            for served in self.models.pop(name, {}).values():
                await self._retire(served, wait=True)
            log.info("model %s unloaded", name)

    def _check_explicit(self, action: str) -> None:
        if self.mode != "explicit":
            # Triton's words (and its 503), so that clients and scripts recognise the refusal.
            raise ServeError(
                503,
                f"explicit model load / unload is not allowed if polling is enabled: this server runs with --model-control-mode "
                f"{self.mode}; start it with --model-control-mode explicit to {action} models through the API",
                reason="not_allowed",
            )

    async def _sync(self, name: str, want: Desired, force: bool = False) -> list[str]:
        """Make ``name`` serve what ``want`` says; returns the reasons of the loads that failed."""
        current = self.models.get(name, {})
        if want.problem and not current and not self.repository.model_dir(name).is_dir():
            self.problems.pop(name, None)  # a model that is gone and never served: forget it
            self.requested.discard(name)
            return [want.problem]
        if want.problem:
            if self.repository.model_dir(name).is_dir():
                self.problems[name] = want.problem
                if current:
                    log.error("model %s: %s; the versions already loaded keep serving", name, want.problem)
                    return [want.problem]
                log.error("model %s is unavailable: %s", name, want.problem)
                return [want.problem]
            want = Desired(None, {})  # the model folder is gone: unload it
        self.problems.pop(name, None)
        failures = []
        for version, fingerprint in sorted(want.versions.items()):
            old = current.get(version)
            if old is not None and old.state == READY and not force and fingerprint in (old.fingerprint, old.failed_reload):
                if fingerprint == old.fingerprint and old.failed_reload:  # the files were put back: nothing failed any more
                    old.failed_reload, old.reason = None, ""
                continue
            served = await self._load_version(name, version, want.config, fingerprint, visible=old is None or old.state != READY)
            if served.state == READY:
                self.models.setdefault(name, {})[version] = served
                if old is not None:
                    await self._retire(old)
                    log.info("model %s v%d reloaded: its files or config.pbtxt changed", name, version)
            elif old is not None and old.state == READY:
                old.reason = f"reload failed, still serving the version loaded before: {served.reason}"
                old.failed_reload = fingerprint
                failures.append(f"v{version}: {served.reason}")
            else:
                self.models.setdefault(name, {})[version] = served
                failures.append(f"v{version}: {served.reason}")
        for version in sorted(set(current) - set(want.versions)):
            await self._retire(self.models[name].pop(version))
            log.info("model %s v%d unloaded: no longer in the repository or its version policy", name, version)
        if name in self.models and not self.models[name]:
            del self.models[name]
        return failures

    async def _load_version(self, name: str, version: int, config, fingerprint: str, visible: bool) -> ServedModel:
        source = ModelVersion(name, version, self.repository.version_dir(name, version))
        served = ServedModel(source, self.metrics.for_model(name, version), config, scheduling(config, self.settings), fingerprint)
        if self._started:  # after start, share with what serves now
            serving = [m.scheduling for m in self.all() if m.state != UNAVAILABLE]
            self.cpu_threads = cpu_threads_per_instance(self.settings, [*serving, served.scheduling])
        if visible:  # a version nobody is served yet: the index shows it loading
            self.models.setdefault(name, {})[version] = served
        try:
            await load(served, self.settings, self.cpu_threads)
        except Exception as exc:  # noqa: BLE001 - any load failure is this version's, reported, never the server's
            served.release()
            reason = exc.message if isinstance(exc, ElunetError) else f"{type(exc).__name__}: {exc}"
            served.state, served.reason = UNAVAILABLE, self.watch.relative(reason)
            log.error("model %s v%d failed to load: %s", name, version, served.reason)
            return served
        served.state, served.reason = READY, ""
        e = served.engine
        log.info("model %s v%d ready: %s on %s (%s, parity %s): %s", name, version, e.kind, e.device, e.name, served.parity, served.scheduling.describe())
        return served

    async def _retire(self, served: ServedModel, wait: bool = False) -> None:
        if self.models.get(served.name, {}).get(served.version) is None:  # unloaded, not replaced by a reload
            served.metrics.unscheduled()
        task = asyncio.create_task(served.retire(self.settings.request_timeout_s + RETIRE_SLACK_S))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        task.add_done_callback(lambda _: return_memory())
        if wait:
            await task

    async def close(self) -> None:
        """Answer everything queued, then release the engines."""
        for served in self.all():
            if served.batcher is not None:
                await served.batcher.close()
            served.release()
            served.state, served.reason = UNAVAILABLE, "server stopped"
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

