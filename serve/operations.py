"""Every operation of the server, written once for both transports.

HTTP (serve/app.py) and gRPC (serve/grpc_server.py) only translate: each reads
its wire format, calls one method here, and writes the result or the
``ServeError`` in its own form (an HTTP status, or the gRPC status code it maps
to). So a model's metadata, a load's parameter checks, an infer request's
output selection or the API-key check cannot differ between the two.

Results are protocol-neutral: the V2 wire types of serve/protocol.py, or, where
Triton defines an answer as a protobuf message (configuration, statistics),
that message, which the HTTP side writes as Triton's JSON.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Awaitable, Callable

import numpy as np

import elunet
from elunet.errors import ElunetError
from elunet.repository import check_model_name
from elunet.serve.decoding import Decoder
from elunet.serve.errors import ServeError, bad_request, not_found
from elunet.serve.extensions import config_from_json, effective_config, statistics_of
from elunet.serve.inference import infer
from elunet.serve.metrics import ServeMetrics
from elunet.serve.protocol import EXTENSIONS, SERVER_NAME, ModelMetadata, ModelState, ServerMetadata, SharedMemoryRegionStatus, TensorMetadata
from elunet.serve.registry import READY, ModelRegistry, ServedModel
from elunet.serve.settings import ServeSettings
from elunet.serve.shared_memory import Lease, SharedMemory, cuda_unsupported

# decode(served, regions) -> (request, pixels, requested timeout in µs or None); encode(served, regions, request, logits) -> the
# answer; regions: the request's Lease of shared memory regions (serve/shared_memory.py)
Decode = Callable[[ServedModel, Lease], Awaitable[tuple]]
Encode = Callable[[ServedModel, Lease, object, np.ndarray], Awaitable]


class ApiKey:
    """The optional bearer token, checked alike for HTTP headers and gRPC metadata."""

    def __init__(self, key: str):
        self._expected = f"Bearer {key}".encode()

    def refusal(self, given: bytes, carrier: str) -> ServeError | None:
        """None when ``given`` (the authorization value) holds the key, else the 401 to answer; ``carrier``
        names where the key goes, e.g. "the header 'Authorization'"."""
        if secrets.compare_digest(given, self._expected):
            return None
        reason = "missing" if not given else "wrong"
        return ServeError(401, f"{reason} API key: send {carrier}: Bearer <key>'", reason="unauthorized",
                          headers={"WWW-Authenticate": "Bearer"})


class Operations:
    """The server's operations over one model registry; ``draining`` turns true at SIGTERM."""

    def __init__(self, registry: ModelRegistry, settings: ServeSettings, decoder: Decoder, metrics: ServeMetrics):
        self.registry, self.settings, self.decoder, self.metrics = registry, settings, decoder, metrics
        self.draining = False
        self.shared_memory = SharedMemory()
        self.cancelled_requests = 0  # cut off by a shutdown past its grace period
        self.api_key = ApiKey(settings.api_key.get_secret_value()) if settings.api_key is not None else None

    def count_cancelled(self) -> None:
        self.cancelled_requests += 1

    # --- health and metadata -------------------------------------------------------------------

    def server_ready(self) -> None:
        """ServeError 503 (saying what is missing) unless the server takes requests."""
        if self.draining:
            raise ServeError(503, "server is shutting down", reason="not_ready")
        ready, waiting = self.registry.readiness()
        if not ready:
            raise ServeError(503, "not ready: " + "; ".join(waiting), reason="not_ready", headers={"Retry-After": "1"})

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(name=SERVER_NAME, version=elunet.__version__, extensions=EXTENSIONS)

    def model_ready(self, name: str, version: str | None) -> None:
        """ServeError unless this model version takes requests: 400 for a bad name, 404 unknown, 503 not ready."""
        served = self.registry.resolve(name, version)
        if served.state != READY:
            raise ServeError(503, f"model {served.name} v{served.version} is {served.state}: {served.reason}", reason="not_ready",
                             headers={"Retry-After": "1"})

    def model_metadata(self, name: str, version: str | None) -> ModelMetadata:
        """The model's tensors as it serves them; parameters: its parity ("passed" or "unverified") and, for an image input,
        what /v1 classify makes of image files (layout, colour, size, pixels in [0, 1])."""
        served = self._ready(name, version)
        interface = served.interface
        parameters = {"parity": served.parity}
        if interface.image is not None:
            parameters["image_input"] = interface.image.describe()
        return ModelMetadata(
            name=served.name,
            versions=[str(v) for v in sorted(self.registry.models[served.name])],
            platform=served.engine.platform,
            inputs=[TensorMetadata(name=t.name, datatype=t.datatype, shape=[-1, *t.dims]) for t in (interface.request_input,)],
            outputs=[TensorMetadata(name=t.name, datatype=t.datatype, shape=[-1, *t.dims]) for t in (interface.output,)],
            parameters=parameters,
        )

    def model_config(self, name: str, version: str | None):
        """The ModelConfig a version is served with (config.pbtxt completed as Triton completes it)."""
        return effective_config(self._ready(name, version))

    def model_statistics(self, name: str | None, version: str | None):
        """Triton's statistics extension: a ModelStatisticsResponse for every model, one, or one version."""
        if name:
            model_name(name)
        return statistics_of(self.metrics, set(self.registry.models), name or None, version or None)

    # --- model repository ----------------------------------------------------------------------

    def repository_index(self, ready_only: bool) -> list[ModelState]:
        """Every model of the repository, loaded or not, and every version served, with its state and reason."""
        return [ModelState(name=n, version=v, state=s, reason=r) for n, v, s, r in self.registry.index(ready_only=ready_only)]

    async def load(self, name: str, parameters: dict) -> None:
        """Load or reload a model (explicit mode); the one parameter taken is ``config``, a ModelConfig as JSON."""
        params = dict(parameters)
        config = params.pop("config", None)
        if params:
            raise bad_request(f"load parameters {sorted(params)} are not supported; elunet takes 'config' (a ModelConfig as JSON) only")
        await self.registry.load(model_name(name), config_from_json(config) if config is not None else None)

    async def unload(self, name: str, parameters: dict) -> None:
        """Unload every version of a model (explicit mode); ``unload_dependents`` is accepted (elunet has no ensembles)."""
        if set(parameters) - {"unload_dependents"} or not isinstance(parameters.get("unload_dependents", False), bool):
            raise bad_request(f"unload takes one parameter, unload_dependents (a boolean); got {parameters}")
        await self.registry.unload(model_name(name))

    # --- shared memory (serve/shared_memory.py) ----------------------------------------------------

    def system_shared_memory_register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.shared_memory.register(name, key, offset, byte_size)

    def system_shared_memory_unregister(self, name: str | None) -> None:
        """Unregister one region, or every one for None; a request under way keeps its region mapped until answered."""
        self.shared_memory.unregister(name)

    def system_shared_memory_status(self, name: str | None) -> list[SharedMemoryRegionStatus]:
        return [SharedMemoryRegionStatus(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size) for r in self.shared_memory.status(name)]

    def cuda_shared_memory_register(self) -> None:
        raise cuda_unsupported()

    def cuda_shared_memory_unregister(self, name: str | None) -> None:
        """Succeeds, as Triton's unregister of a region it does not hold: perf_analyzer's clean-up unregisters every kind."""

    def cuda_shared_memory_status(self, name: str | None) -> list:
        """No CUDA region can be registered here: every status is empty, and one region asked for is unknown."""
        if name:
            raise not_found(f"no CUDA shared memory region {name!r} is registered (this server does not support CUDA shared memory)")
        return []

    # --- inference -----------------------------------------------------------------------------

    async def infer(self, name: str, version: str | None, decode: Decode, encode: Encode):
        """Answer one infer (or classify) request: the version resolved and held until answered, its body
        decoded, its pixels batched, its logits encoded, every step counted (serve/inference.py); the shared memory
        regions it names held mapped until it is answered."""
        with self.registry.resolve(name, version) as served, self.shared_memory.lease() as regions:
            return await infer(served, lambda: decode(served, regions), lambda request, logits: encode(served, regions, request, logits),
                               self.settings.allow_non_finite)

    def _ready(self, name: str, version: str | None) -> ServedModel:
        served = self.registry.resolve(name, version)
        served.check_ready()
        return served


def model_name(name: str) -> str:
    """``name`` when it is a valid model name, else 400 saying what a name may hold."""
    try:
        return check_model_name(name)
    except ElunetError as exc:
        raise bad_request(f"{exc.message}; {exc.hint}") from None


async def unless_disconnected(work: Awaitable, disconnected: Awaitable):
    """The result of ``work``, awaited in this task; if ``disconnected`` completes first (the client left), this
    task is cancelled out of ``work``, so a request nobody waits for no longer holds a place in a batch, and
    ClientGone is raised instead."""
    current = asyncio.current_task()
    state = {"gone": False, "done": False}

    def on_disconnect(watch: asyncio.Future) -> None:
        if not state["done"] and not watch.cancelled() and watch.exception() is None:
            state["gone"] = True
            current.cancel()

    watch = asyncio.ensure_future(disconnected)
    watch.add_done_callback(on_disconnect)
    try:
        return await work
    except asyncio.CancelledError:
        if state["gone"]:
            current.uncancel()
            raise ClientGone() from None
        raise
    finally:
        state["done"] = True  # a disconnect noticed from now on is too late to matter
        watch.cancel()


class ClientGone(Exception):
    """The client disconnected before its answer was ready: there is nobody to answer."""
