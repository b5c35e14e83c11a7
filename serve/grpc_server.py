"""The gRPC transport: Triton's ``inference.GRPCInferenceService`` and the standard ``grpc.health.v1.Health``.

It runs in the server's process and event loop, beside the HTTP routes, on
``--grpc-port`` (0: off), and translates each call to the operation the HTTP
route calls too (serve/operations.py): the same instances, batcher, errors,
timeouts, metrics and API key (``authorization: Bearer <key>`` metadata). The messages are
tritonclient's generated ``service_pb2`` / ``model_config_pb2``; nothing here
writes wire format by hand. Errors keep their meaning across the protocols:
400 -> INVALID_ARGUMENT, 401 -> UNAUTHENTICATED, 404 -> NOT_FOUND,
413 -> RESOURCE_EXHAUSTED, 503 -> UNAVAILABLE, 504 -> DEADLINE_EXCEEDED; a
message above the size limit is RESOURCE_EXHAUSTED from gRPC itself.
"""

from __future__ import annotations

import asyncio
import math

import grpc
import numpy as np
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from elunet.errors import ElunetError
from elunet.serve.decoding import INLINE_BYTES
from elunet.serve.errors import ServeError, bad_request
from elunet.serve.registry import ServedModel
from elunet.serve.operations import Operations
from elunet.serve.protocol import INPUT_DATATYPES
from elunet.serve.shared_memory import UNSUPPORTED, Lease, in_shared_memory
from elunet.serve.tensors import (
    as_pixels,
    bytes_elements,
    check_element_count,
    check_image_input,
    check_images_carried,
    encoded_images_pixels,
    check_input,
    output_tensor,
    raw_values,
    requested_outputs,
    requested_timeout_us,
    shared_input_pixels,
    tensor_bytes,
)

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
# Typed contents field of each input datatype (FP16 has none in the protocol: send it raw).
CONTENTS = {"FP32": "fp32_contents", "UINT8": "uint_contents"}


def _parameters(params) -> dict:
    """An InferParameter map as plain values."""
    return {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in params.items() if value.WhichOneof("parameter_choice")}


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The servicer: method names as in Triton's grpc_service.proto, each a translation to one operation
    (serve/operations.py). The generated base answers UNIMPLEMENTED for what elunet does not do (trace and
    log settings)."""

    def __init__(self, ops: Operations):
        self._ops = ops

    async def _call(self, context, work, *, open_method: bool = False):
        """``work()`` with the API key checked, its ServeError/ElunetError as the gRPC status it maps to."""
        try:
            self._authorize(context, open_method)
            return await work()
        except ServeError as exc:
            code = grpc.StatusCode.UNIMPLEMENTED if exc.reason == UNSUPPORTED else STATUS_CODES.get(exc.status, grpc.StatusCode.UNKNOWN)
            await context.abort(code, _details(exc.message))
        except ElunetError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _details(f"{exc.message}; {exc.hint}" if exc.hint else exc.message))

    def _authorize(self, context, open_method: bool) -> None:
        if self._ops.api_key is not None and not open_method:
            refusal = self._ops.api_key.refusal(dict(context.invocation_metadata()).get("authorization", "").encode(), "the metadata 'authorization")
            if refusal is not None:
                raise refusal

    # --- health and metadata ----------------------------------------------------------------------

    async def ServerLive(self, request, context):  # noqa: N802 - the proto's names
        async def work():
            return service_pb2.ServerLiveResponse(live=True)

        return await self._call(context, work, open_method=True)

    async def ServerReady(self, request, context):  # noqa: N802
        async def work():
            return service_pb2.ServerReadyResponse(ready=_succeeds(self._ops.server_ready))

        return await self._call(context, work, open_method=True)

    async def ModelReady(self, request, context):  # noqa: N802
        async def work():
            try:
                self._ops.model_ready(request.name, request.version or None)
            except ServeError as exc:
                if exc.status == 400:
                    raise
                return service_pb2.ModelReadyResponse(ready=False)
            return service_pb2.ModelReadyResponse(ready=True)

        return await self._call(context, work)

    async def ServerMetadata(self, request, context):  # noqa: N802
        async def work():
            return json_format.ParseDict(self._ops.server_metadata().model_dump(), service_pb2.ServerMetadataResponse())

        return await self._call(context, work)

    async def ModelMetadata(self, request, context):  # noqa: N802
        async def work():
            metadata = self._ops.model_metadata(request.name, request.version or None)
            # Triton's message has no parameters field: elunet's (parity) travel as response metadata.
            await context.send_initial_metadata([(f"elunet-{k}", str(v)) for k, v in (metadata.parameters or {}).items()])
            return json_format.ParseDict(metadata.model_dump(exclude={"parameters"}), service_pb2.ModelMetadataResponse())

        return await self._call(context, work)

    async def ModelConfig(self, request, context):  # noqa: N802
        async def work():
            return service_pb2.ModelConfigResponse(config=self._ops.model_config(request.name, request.version or None))

        return await self._call(context, work)

    async def ModelStatistics(self, request, context):  # noqa: N802
        async def work():
            return self._ops.model_statistics(request.name, request.version)

        return await self._call(context, work)

    # --- model repository ---------------------------------------------------------------------------

    async def RepositoryIndex(self, request, context):  # noqa: N802
        async def work():
            response = service_pb2.RepositoryIndexResponse()
            for state in self._ops.repository_index(request.ready):
                response.models.add(**state.model_dump())
            return response

        return await self._call(context, work)

    async def RepositoryModelLoad(self, request, context):  # noqa: N802
        async def work():
            await self._ops.load(request.model_name, _parameters(request.parameters))
            return service_pb2.RepositoryModelLoadResponse()

        return await self._call(context, work)

    async def RepositoryModelUnload(self, request, context):  # noqa: N802
        async def work():
            await self._ops.unload(request.model_name, _parameters(request.parameters))
            return service_pb2.RepositoryModelUnloadResponse()

        return await self._call(context, work)

    # --- shared memory ----------------------------------------------------------------------------------

    async def SystemSharedMemoryRegister(self, request, context):  # noqa: N802
        async def work():
            self._ops.system_shared_memory_register(request.name, request.key, request.offset, request.byte_size)
            return service_pb2.SystemSharedMemoryRegisterResponse()

        return await self._call(context, work)

    async def SystemSharedMemoryUnregister(self, request, context):  # noqa: N802
        async def work():
            self._ops.system_shared_memory_unregister(request.name or None)
            return service_pb2.SystemSharedMemoryUnregisterResponse()

        return await self._call(context, work)

    async def SystemSharedMemoryStatus(self, request, context):  # noqa: N802
        async def work():
            regions = self._ops.system_shared_memory_status(request.name or None)
            return json_format.ParseDict({"regions": {r.name: r.model_dump() for r in regions}}, service_pb2.SystemSharedMemoryStatusResponse())

        return await self._call(context, work)

    async def CudaSharedMemoryRegister(self, request, context):  # noqa: N802
        async def work():
            self._ops.cuda_shared_memory_register()

        return await self._call(context, work)

    async def CudaSharedMemoryUnregister(self, request, context):  # noqa: N802
        async def work():
            self._ops.cuda_shared_memory_unregister(request.name or None)
            return service_pb2.CudaSharedMemoryUnregisterResponse()

        return await self._call(context, work)

    async def CudaSharedMemoryStatus(self, request, context):  # noqa: N802
        async def work():
            self._ops.cuda_shared_memory_status(request.name or None)
            return service_pb2.CudaSharedMemoryStatusResponse()

        return await self._call(context, work)

    # --- inference ------------------------------------------------------------------------------------

    async def ModelInfer(self, request, context):  # noqa: N802
        return await self._call(context, lambda: self._infer(request))

    async def ModelStreamInfer(self, request_iterator, context):  # noqa: N802
        """Each request of the stream is inferred as it arrives (so a stream's requests batch together);
        each answer, or its error, is sent back as soon as it is ready, with the request's id."""
        answers: asyncio.Queue = asyncio.Queue()
        pending: set[asyncio.Task] = set()

        async def one(request):
            try:
                self._authorize(context, open_method=False)
                answers.put_nowait(service_pb2.ModelStreamInferResponse(infer_response=await self._infer(request)))
            except (ServeError, ElunetError) as exc:
                answers.put_nowait(service_pb2.ModelStreamInferResponse(
                    error_message=exc.message, infer_response=service_pb2.ModelInferResponse(id=request.id, model_name=request.model_name)))

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

    async def _infer(self, request):
        return await self._ops.infer(request.model_name, request.model_version or None,
                                     lambda served, regions: self._decode(request, served, regions), self._encode)

    async def _decode(self, request, served: ServedModel, regions: Lease):
        names = [t.name for t in request.inputs]
        tensor = request.inputs[0] if request.inputs else None
        datatype, shape = (tensor.datatype, list(tensor.shape)) if tensor is not None else ("", [])
        image_files = served.interface.image_files
        if image_files is not None:
            count = check_image_input(names, datatype, shape, image_files)
        else:
            dtype = check_input(names, datatype, shape, served.interface.input)
        raw = request.raw_input_contents
        if raw and tensor.HasField("contents"):
            raise bad_request(f"input {names[0]!r} has both contents and raw_input_contents; send one")
        if len(raw) > 1:
            raise bad_request(f"raw_input_contents holds {len(raw)} tensors; this model has one input")
        allow_non_finite = self._ops.settings.allow_non_finite
        parameters = _parameters(tensor.parameters)
        if image_files is not None:
            what = f"input {names[0]!r}"
            check_images_carried(parameters, what)
            elements = bytes_elements(raw[0], what) if raw else list(tensor.contents.bytes_contents)
            check_element_count(elements, count, shape, what)
            pixels = await self._ops.decoder.run(INLINE_BYTES, True, encoded_images_pixels, elements, image_files, served.interface.image,
                                                 self._ops.settings.max_image_pixels)
        elif in_shared_memory(parameters, bool(raw) or tensor.HasField("contents"), f"input {names[0]!r}"):
            pixels = await self._ops.decoder.run(math.prod(shape) * dtype.itemsize, False, shared_input_pixels, regions, names[0], parameters,
                                                 datatype, shape, allow_non_finite)
        elif raw:
            values = raw_values(raw[0], names[0], dtype, shape, datatype)
            pixels = await self._ops.decoder.run(len(raw[0]), False, as_pixels, values, names[0], shape, datatype, allow_non_finite)
        else:
            field = CONTENTS.get(datatype)
            if field is None:
                raise bad_request(f"input {names[0]!r} of datatype {datatype} has no typed contents field; send it in raw_input_contents")
            # Off the event loop like any tensor: a repeated field of millions of numbers takes a while to convert.
            contents = getattr(tensor.contents, field)
            pixels = await self._ops.decoder.run(len(contents) * 4, False, typed_pixels, contents, names[0], INPUT_DATATYPES[datatype], shape,
                                                 datatype, allow_non_finite)
        return request, pixels, requested_timeout_us(_parameters(request.parameters))

    async def _encode(self, served: ServedModel, regions: Lease, request, logits: np.ndarray):
        outputs = [(o.name, _parameters(o.parameters)) for o in request.outputs]
        output_name = served.interface.output.name
        classes, _, shared = requested_outputs(outputs, output_name, binary=True)
        datatype, shape, values = output_tensor(logits, classes, served.interface.labels)
        response = service_pb2.ModelInferResponse(model_name=served.name, model_version=str(served.version), id=request.id)
        response.outputs.add(name=output_name, datatype=datatype, shape=shape)
        data = tensor_bytes(datatype, values)
        if shared is not None:
            regions.write(shared, f"output {output_name!r}", data)
            # Triton keeps one raw_output_contents entry per output, empty for one in shared memory: clients
            # (perf_analyzer) find an output's bytes by its index, and crash on a missing entry.
            data = b""
        response.raw_output_contents.append(data)
        return response


def _succeeds(check) -> bool:
    try:
        check()
    except ServeError:
        return False
    return True


def typed_pixels(contents, name: str, numpy_dtype: str, shape: list[int], datatype: str, allow_non_finite: bool) -> np.ndarray:
    """Pixels of input ``name`` from a typed contents field (fp32_contents, uint_contents); 400 when their number is wrong."""
    values = np.asarray(contents, dtype=np.dtype(numpy_dtype))
    if values.size != math.prod(shape):  # math.prod: numpy's int64 product wraps around for huge shapes
        raise bad_request(f"input {name!r} has {values.size} values in contents; shape {shape} needs {math.prod(shape)}")
    return as_pixels(values, name, shape, datatype, allow_non_finite)


class HealthService(health_pb2_grpc.HealthServicer):
    """grpc.health.v1 for Kubernetes probes: service "" is the server's readiness, a model's name its readiness."""

    def __init__(self, ops: Operations):
        self._ops = ops

    def _status(self, service: str) -> int:
        if self._ops.draining:
            return health_pb2.HealthCheckResponse.NOT_SERVING
        try:
            if service:
                self._ops.model_ready(service, None)
            else:
                self._ops.server_ready()
        except ServeError as exc:
            if exc.status in (400, 404) and service not in self._ops.registry.repository.models():
                return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            return health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse.SERVING

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


def grpc_server(ops: Operations):
    """The gRPC server over these operations, not yet started."""
    settings = ops.settings
    limit = settings.max_body_bytes
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", -1),
        # The HTTP bounds, for gRPC: a connection must finish its HTTP/2 handshake as HTTP headers must arrive,
        # and the streams at once are bounded as HTTP connections are.
        ("grpc.server_handshake_timeout_ms", int(settings.header_timeout_s * 1000)),
        ("grpc.max_concurrent_streams", settings.max_connections),
    ])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(ops), server)
    health_pb2_grpc.add_HealthServicer_to_server(HealthService(ops), server)
    address = f"[{settings.host}]:{settings.grpc_port}" if ":" in settings.host else f"{settings.host}:{settings.grpc_port}"
    server.add_insecure_port(address)
    return server


