"""The gRPC front end: Triton's ``inference.GRPCInferenceService`` and the standard ``grpc.health.v1.Health``.

It runs in the server's process and event loop, beside the HTTP routes, on
``--grpc-port`` (0: off), and serves the same registry through the same core
(serve/inference.py): the same instances, batcher, errors, timeouts, metrics
and API key (``authorization: Bearer <key>`` metadata). The messages are
tritonclient's generated ``service_pb2`` / ``model_config_pb2``; nothing here
writes wire format by hand. Errors keep their meaning across the protocols:
400 -> INVALID_ARGUMENT, 401 -> UNAUTHENTICATED, 404 -> NOT_FOUND,
413 -> RESOURCE_EXHAUSTED, 503 -> UNAVAILABLE, 504 -> DEADLINE_EXCEEDED; a
message above the size limit is RESOURCE_EXHAUSTED from gRPC itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

import elunet
from elunet.errors import ElunetError
from elunet.serve.decoding import Decoder
from elunet.serve.errors import ServeError, bad_request
from elunet.serve.extensions import config_from_json, effective_config, statistics_of
from elunet.serve.inference import infer
from elunet.serve.metrics import ServeMetrics
from elunet.serve.models import READY, ModelRegistry, ServedModel
from elunet.serve.protocol import EXTENSIONS, INPUT_DATATYPES, SERVER_NAME
from elunet.serve.settings import ServeSettings
from elunet.serve.tensors import as_pixels, check_input, classification_count, output_tensor, raw_values, requested_timeout_us, tensor_bytes

log = logging.getLogger("elunet.serve")

STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Probes carry no API key, as on HTTP.
OPEN_METHODS = ("ServerLive", "ServerReady")
# Typed contents field of each input datatype (FP16 has none in the protocol: send it raw).
CONTENTS = {"FP32": "fp32_contents", "UINT8": "uint_contents"}


def _parameters(params) -> dict:
    """An InferParameter map as plain values."""
    return {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in params.items() if value.WhichOneof("parameter_choice")}


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The servicer: method names as in Triton's grpc_service.proto. The generated base answers
    UNIMPLEMENTED for what elunet does not do (shared memory, trace and log settings)."""

    def __init__(self, registry: ModelRegistry, settings: ServeSettings, decoder: Decoder, metrics: ServeMetrics, draining):
        self._registry, self._settings, self._decoder, self._metrics = registry, settings, decoder, metrics
        self._draining = draining
        key = settings.api_key.get_secret_value() if settings.api_key is not None else None
        self._expected = f"Bearer {key}" if key else None
        self._pb2 = service_pb2

    # --- plumbing ---------------------------------------------------------------------------

    def _authorize(self, name: str, context) -> None:
        if self._expected and name not in OPEN_METHODS:
            given = dict(context.invocation_metadata()).get("authorization", "")
            if not secrets.compare_digest(given.encode(), self._expected.encode()):
                raise ServeError(401, f"{'missing' if not given else 'wrong'} API key: send the metadata 'authorization: Bearer <key>'")

    async def _call(self, name: str, context, work):
        """Run ``work()`` with the API key checked and ServeError/ElunetError mapped to gRPC status codes."""
        try:
            self._authorize(name, context)
            return await work()
        except ServeError as exc:
            await context.abort(STATUS_CODES.get(exc.status, grpc.StatusCode.UNKNOWN), _details(exc.message))
        except ElunetError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _details(f"{exc.message}; {exc.hint}" if exc.hint else exc.message))

    # --- health and metadata ----------------------------------------------------------------------

    async def ServerLive(self, request, context):  # noqa: N802 - the proto's names
        async def work():
            return self._pb2.ServerLiveResponse(live=True)

        return await self._call("ServerLive", context, work)

    async def ServerReady(self, request, context):  # noqa: N802
        async def work():
            return self._pb2.ServerReadyResponse(ready=not self._draining() and self._registry.readiness()[0])

        return await self._call("ServerReady", context, work)

    async def ModelReady(self, request, context):  # noqa: N802
        async def work():
            try:
                served = self._registry.resolve(request.name, request.version or None)
            except ServeError as exc:
                if exc.status == 400:
                    raise
                return self._pb2.ModelReadyResponse(ready=False)
            return self._pb2.ModelReadyResponse(ready=served.state == READY)

        return await self._call("ModelReady", context, work)

    async def ServerMetadata(self, request, context):  # noqa: N802
        async def work():
            return self._pb2.ServerMetadataResponse(name=SERVER_NAME, version=elunet.__version__, extensions=EXTENSIONS)

        return await self._call("ServerMetadata", context, work)

    async def ModelMetadata(self, request, context):  # noqa: N802
        async def work():
            served = self._ready_model(request.name, request.version)
            e = served.engine
            response = self._pb2.ModelMetadataResponse(
                name=served.name, versions=[str(v) for v in sorted(self._registry.models[served.name])], platform=e.platform
            )
            response.inputs.add(name=e.input.name, datatype=e.input.datatype, shape=[-1, *e.input.dims])
            response.outputs.add(name=e.output.name, datatype=e.output.datatype, shape=[-1, *e.output.dims])
            return response

        return await self._call("ModelMetadata", context, work)

    async def ModelConfig(self, request, context):  # noqa: N802
        async def work():
            return self._pb2.ModelConfigResponse(config=effective_config(self._ready_model(request.name, request.version)))

        return await self._call("ModelConfig", context, work)

    async def ModelStatistics(self, request, context):  # noqa: N802
        async def work():
            return statistics_of(self._metrics, set(self._registry.models), request.name or None, request.version or None)

        return await self._call("ModelStatistics", context, work)

    # --- model repository ---------------------------------------------------------------------------

    async def RepositoryIndex(self, request, context):  # noqa: N802
        async def work():
            response = self._pb2.RepositoryIndexResponse()
            for name, version, state, reason in self._registry.index(ready_only=request.ready):
                response.models.add(name=name, version=version, state=state, reason=reason)
            return response

        return await self._call("RepositoryIndex", context, work)

    async def RepositoryModelLoad(self, request, context):  # noqa: N802
        async def work():
            params = _parameters(request.parameters)
            config_json = params.pop("config", None)
            if params:
                raise bad_request(f"load parameters {sorted(params)} are not supported; elunet takes 'config' (a ModelConfig as JSON) only")
            await self._registry.load(request.model_name, config_from_json(config_json) if config_json is not None else None)
            return self._pb2.RepositoryModelLoadResponse()

        return await self._call("RepositoryModelLoad", context, work)

    async def RepositoryModelUnload(self, request, context):  # noqa: N802
        async def work():
            params = _parameters(request.parameters)
            if set(params) - {"unload_dependents"} or not isinstance(params.get("unload_dependents", False), bool):
                raise bad_request(f"unload takes one parameter, unload_dependents (a boolean); got {params}")
            await self._registry.unload(request.model_name)
            return self._pb2.RepositoryModelUnloadResponse()

        return await self._call("RepositoryModelUnload", context, work)

    # --- inference ------------------------------------------------------------------------------------

    async def ModelInfer(self, request, context):  # noqa: N802
        return await self._call("ModelInfer", context, lambda: self._infer(request))

    async def ModelStreamInfer(self, request_iterator, context):  # noqa: N802
        """Each request of the stream is inferred as it arrives (so a stream's requests batch together);
        each answer, or its error, is sent back as soon as it is ready, with the request's id."""
        answers: asyncio.Queue = asyncio.Queue()
        pending: set[asyncio.Task] = set()

        async def one(request):
            try:
                answers.put_nowait(self._pb2.ModelStreamInferResponse(infer_response=await self._checked_infer(request, context)))
            except (ServeError, ElunetError) as exc:
                message = exc.message
                answers.put_nowait(self._pb2.ModelStreamInferResponse(
                    error_message=message, infer_response=self._pb2.ModelInferResponse(id=request.id, model_name=request.model_name)))

        async def read():
            async for request in request_iterator:
                task = asyncio.create_task(one(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
            answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                yield answer
        finally:
            reader.cancel()

    async def _checked_infer(self, request, context):
        self._authorize("ModelStreamInfer", context)
        return await self._infer(request)

    async def _infer(self, request):
        with self._registry.resolve(request.model_name, request.model_version or None) as served:
            return await infer(served, lambda: self._decode(request, served), lambda req, logits: self._encode(req, served, logits),
                               self._settings.request_timeout_s, self._settings.allow_non_finite)

    async def _decode(self, request, served: ServedModel):
        names = [t.name for t in request.inputs]
        tensor = request.inputs[0] if request.inputs else None
        datatype, shape = (tensor.datatype, list(tensor.shape)) if tensor is not None else ("", [])
        dtype = check_input(names, datatype, shape, served.card.input_shape)
        raw = request.raw_input_contents
        if raw and tensor.HasField("contents"):
            raise bad_request(f"input {names[0]!r} has both contents and raw_input_contents; send one")
        if raw:
            if len(raw) != 1:
                raise bad_request(f"raw_input_contents holds {len(raw)} tensors; this model has one input")
            values = raw_values(raw[0], dtype, shape, datatype)
            pixels = await self._decoder.run(len(raw[0]), False, as_pixels, values, shape, datatype, self._settings.allow_non_finite)
        else:
            field = CONTENTS.get(datatype)
            if field is None:
                raise bad_request(f"input {names[0]!r} of datatype {datatype} has no typed contents field; send it in raw_input_contents")
            values = np.asarray(getattr(tensor.contents, field), dtype=np.dtype(INPUT_DATATYPES[datatype]))
            if values.size != math.prod(shape):  # math.prod: numpy's int64 product wraps around for huge shapes
                raise bad_request(f"input {names[0]!r} has {values.size} values in contents; shape {shape} needs {math.prod(shape)}")
            pixels = as_pixels(values, shape, datatype, self._settings.allow_non_finite)
        return request, pixels, requested_timeout_us(_parameters(request.parameters))

    async def _encode(self, request, served: ServedModel, logits: np.ndarray):
        classes = None
        names = [o.name for o in request.outputs]
        engine_output = served.engine.output.name
        if names and names != [engine_output]:
            raise bad_request(f"requested outputs {names}; this model has one output, {engine_output!r}")
        for output in request.outputs:
            params = _parameters(output.parameters)
            if "classification" in params:
                classes = classification_count(params["classification"])
        datatype, shape, values = output_tensor(logits, classes, served.labels)
        response = self._pb2.ModelInferResponse(model_name=served.name, model_version=str(served.version), id=request.id)
        response.outputs.add(name=engine_output, datatype=datatype, shape=shape)
        response.raw_output_contents.append(tensor_bytes(datatype, values))
        return response

    def _ready_model(self, name: str, version: str) -> ServedModel:
        served = self._registry.resolve(name, version or None)
        served.check_ready()
        return served


class HealthService(health_pb2_grpc.HealthServicer):
    """grpc.health.v1 for Kubernetes probes: service "" is the server's readiness, a model's name its readiness."""

    def __init__(self, registry: ModelRegistry, draining):
        self._registry, self._draining = registry, draining

    def _status(self, service: str) -> int:
        if self._draining():
            return health_pb2.HealthCheckResponse.NOT_SERVING
        if not service:
            ready = self._registry.readiness()[0]
        else:
            versions = self._registry.models.get(service)
            if versions is None and service not in self._registry.repository.models():
                return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            ready = bool(versions) and any(m.state == READY for m in versions.values())
        return health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING

    async def Check(self, request, context):  # noqa: N802
        status = self._status(request.service)
        if status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request, context):  # noqa: N802
        last = None
        while True:
            status = self._status(request.service)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(0.5)


def _details(message: str) -> str:
    """A status message that fits in gRPC's metadata (8 KiB by default): one echoing a huge model name would
    reach the client as RESOURCE_EXHAUSTED "Stream removed" instead of its own status."""
    return message if len(message) <= MAX_DETAILS else message[: MAX_DETAILS - 20] + " ... (cut short)"


MAX_DETAILS = 4096


def grpc_server(registry: ModelRegistry, settings: ServeSettings, decoder: Decoder, metrics: ServeMetrics, draining):
    """The gRPC server, not yet started; ``draining()`` says whether SIGTERM came."""
    limit = settings.max_body_bytes
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", -1),
        # The HTTP bounds, for gRPC: a connection must finish its HTTP/2 handshake as HTTP headers must arrive,
        # and the streams at once are bounded as HTTP connections are.
        ("grpc.server_handshake_timeout_ms", int(settings.header_timeout_s * 1000)),
        ("grpc.max_concurrent_streams", settings.max_connections),
    ])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(registry, settings, decoder, metrics, draining), server)
    health_pb2_grpc.add_HealthServicer_to_server(HealthService(registry, draining), server)
    address = f"[{settings.host}]:{settings.grpc_port}" if ":" in settings.host else f"{settings.host}:{settings.grpc_port}"
    server.add_insecure_port(address)
    return server


