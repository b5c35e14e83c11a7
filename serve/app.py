"""The HTTP transport: KServe V2 routes, /v1 classify, /metrics, /docs.

Each route reads its request, calls one operation (serve/operations.py), and
writes its result; errors leave as the V2 error body. ``create_app(settings)``
reads the repository's cards at once; the lifespan then loads and warms up
every model in a background task, so liveness is answered during warm-up and
readiness turns true only after it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

import elunet
from elunet.serve.decoding import INLINE_BYTES, Decoder
from elunet.serve.errors import ServeError, bad_request
from elunet.serve.extensions import proto_json
from elunet.serve.images import images_pixels, softmax
from elunet.serve.metrics import MetricsPort, ServeMetrics
from elunet.serve.middleware import AccessLog, ApiKeyCheck, BodyLimit, TrailingSlash
from elunet.serve.http_infer import PATHS as INFER_PATHS
from elunet.serve.http_infer import InferRoute, disconnected
from elunet.serve.registry import ModelRegistry, ServedModel
from elunet.serve.operations import ClientGone, Operations, unless_disconnected
from elunet.serve.protocol import (
    DOCS_ASSETS,
    DOCS_OAUTH2_PATH,
    DOCS_PATH,
    LIVE_PATH,
    METRICS_PATH,
    OPENAPI_PATH,
    READY_PATH,
    ClassifyRequest,
    ClassifyResponse,
    ErrorResponse,
    ImagePrediction,
    InferenceRequest,
    InferenceResponse,
    LabelScore,
    ModelMetadata,
    ModelState,
    RepositoryIndexRequest,
    RepositoryModelRequest,
    ServerMetadata,
    SharedMemoryRegionStatus,
    SystemSharedMemoryRegisterRequest,
)
from elunet.serve.settings import ServeSettings
from elunet.serve.tensors import HEADER_LENGTH

log = logging.getLogger("elunet.serve")

_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 500, 503, 504)}


def create_app(settings: ServeSettings) -> FastAPI:
    """The HTTP transport: FastAPI routes that translate to and from the operations (serve/operations.py)."""
    metrics = ServeMetrics()
    registry = ModelRegistry(settings, metrics)
    decoder = Decoder(settings.decode_workers)
    ops = Operations(registry, settings, decoder, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(registry.start())
        polling = asyncio.create_task(registry.poll_forever()) if settings.model_control_mode == "poll" else None
        await decoder.start()
        grpc = None
        if settings.grpc_port:
            from elunet.serve.grpc_server import grpc_server

            grpc = grpc_server(ops)
            await grpc.start()
            log.info("gRPC on %s:%d", settings.host, settings.grpc_port)
        app.state.grpc = grpc
        metrics_port = None
        if settings.metrics_port:
            key = None if "metrics" in settings.open_endpoints else ops.api_key
            metrics_port = MetricsPort(metrics, settings.host, settings.metrics_port, METRICS_PATH, key)
            metrics_port.start()
            log.info("metrics on http://%s:%d%s", settings.host, metrics_port.port, METRICS_PATH)
        try:
            yield
        finally:
            # Reached after the server stopped accepting and in-flight requests were answered.
            if grpc is not None:
                await grpc.stop(settings.request_timeout_s)  # answers the RPCs in flight, refuses new ones
            if metrics_port is not None:
                await asyncio.to_thread(metrics_port.stop)
            if polling is not None:
                polling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await polling
            await loading
            await registry.close()
            decoder.close()

    app = FastAPI(
        title="elunet serving",
        version=elunet.__version__,
        description="Batched image classification over the KServe V2 / Open Inference Protocol, "
        "with a /v1 convenience endpoint that takes image files.",
        lifespan=lifespan,
        redirect_slashes=False,  # /v2/ is answered as /v2 (TrailingSlash), never redirected
        openapi_url=OPENAPI_PATH,
        docs_url=None,  # FastAPI's /docs loads Swagger UI from a CDN: blank offline (_add_docs serves it from a package)
        redoc_url=None,
    )
    app.state.operations = ops
    app.state.grpc = None
    _install_error_handlers(app)
    _add_v2_routes(app, ops)
    _add_v1_routes(app, ops)

    @app.get(METRICS_PATH, tags=["operations"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text format: Triton's nv_inference_* and nv_cpu_* families, process metrics, and elunet's batch sizes
        and scheduling (serve/metrics.py)."""
        return Response(metrics.render(), media_type=metrics.content_type)

    _document_infer_body(app)
    _add_docs(app)
    # Added innermost first. A request meets: the path normalized, the access log, CORS (preflights carry no API
    # key), the API key (before any of the body is read into memory), the body read whole within its limits,
    # then infer's route or FastAPI's router.
    app.add_middleware(InferRoute, ops=ops)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s, draining=lambda: ops.draining)
    if ops.api_key is not None:
        app.add_middleware(ApiKeyCheck, key=ops.api_key, open_groups=settings.open_endpoints)
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_allow_origins, allow_methods=["GET", "POST"], allow_headers=["*"],
            expose_headers=[HEADER_LENGTH],  # browsers may then read binary-extension responses
        )
    app.add_middleware(AccessLog, on_cancel=ops.count_cancelled)
    app.add_middleware(TrailingSlash)
    return app


# --- V2 ---------------------------------------------------------------------------------


def _add_v2_routes(app: FastAPI, ops: Operations) -> None:
    """Every V2 route but infer, which InferRoute answers (serve/http_infer.py)."""

    @app.get("/v2", response_model=ServerMetadata, tags=["v2"])
    async def server_metadata() -> ServerMetadata:
        return ops.server_metadata()

    async def server_live() -> dict:
        return {"live": True}

    async def server_ready() -> dict:
        ops.server_ready()
        return {"ready": True}

    # HEAD too: load balancers and uptime checks probe with it. A route of its own, so that each method has an
    # operation id of its own in the OpenAPI document.
    for path, probe in ((LIVE_PATH, server_live), (READY_PATH, server_ready)):
        app.add_api_route(path, probe, methods=["GET"], tags=["v2"], responses=_ERRORS)
        app.add_api_route(path, probe, methods=["HEAD"], tags=["v2"], responses=_ERRORS, operation_id=f"{probe.__name__}_head")

    @app.post("/v2/repository/index", response_model=list[ModelState], tags=["v2"], responses=_ERRORS)
    async def repository_index(request: Request) -> list[ModelState]:
        """Every model of the repository, loaded or not, and every version served, with its state and reason."""
        return ops.repository_index((await _repository_body(request, RepositoryIndexRequest)).ready)

    @app.post("/v2/repository/models/{model}/load", tags=["v2"], responses=_ERRORS)
    async def repository_load(request: Request, model: str) -> Response:
        """Load or reload a model (``--model-control-mode explicit``); body parameter ``config``: a ModelConfig as JSON."""
        await ops.load(model, (await _repository_body(request, RepositoryModelRequest)).parameters or {})
        return Response(status_code=200)

    @app.post("/v2/repository/models/{model}/unload", tags=["v2"], responses=_ERRORS)
    async def repository_unload(request: Request, model: str) -> Response:
        """Unload every version of a model (``--model-control-mode explicit``); ``unload_dependents`` is accepted (elunet has no ensembles)."""
        await ops.unload(model, (await _repository_body(request, RepositoryModelRequest)).parameters or {})
        return Response(status_code=200)

    _add_shared_memory_routes(app, ops)

    async def metadata(request: Request, model: str, version: str | None = None) -> ModelMetadata:
        return ops.model_metadata(model, version)

    async def ready(request: Request, model: str, version: str | None = None) -> dict:
        ops.model_ready(model, version)
        return {"name": model, "version": version or "", "ready": True}

    async def config(request: Request, model: str, version: str | None = None) -> dict:
        """The model configuration a version is served with (Triton's ModelConfig as JSON, completed)."""
        return proto_json(ops.model_config(model, version))

    async def model_statistics(request: Request, model: str | None = None, version: str | None = None) -> dict:
        """Triton's statistics extension: counts and cumulative durations per model version, and per batch size."""
        return proto_json(ops.model_statistics(model, version))

    # Before the {model} routes, so that "stats" is not taken for a model name.
    app.add_api_route("/v2/models/stats", model_statistics, methods=["GET"], tags=["v2"], responses=_ERRORS)
    _add_model_routes(app, "/v2/models/{model}", "/stats", model_statistics, methods=["GET"], tags=["v2"], responses=_ERRORS)
    _add_model_routes(app, "/v2/models/{model}", "/config", config, methods=["GET"], tags=["v2"], responses=_ERRORS)
    _add_model_routes(app, "/v2/models/{model}", "", metadata, methods=["GET"], response_model=ModelMetadata, tags=["v2"], responses=_ERRORS)
    _add_model_routes(app, "/v2/models/{model}", "/ready", ready, methods=["GET"], tags=["v2"], responses=_ERRORS)


def _add_shared_memory_routes(app: FastAPI, ops: Operations) -> None:
    """Triton's system and CUDA shared-memory extensions (serve/shared_memory.py)."""
    system, cuda = "/v2/systemsharedmemory", "/v2/cudasharedmemory"

    @app.post(system + "/region/{name}/register", tags=["v2"], responses=_ERRORS)
    async def system_shared_memory_register(request: Request, name: str) -> Response:
        """Register a region of a POSIX shared-memory object: body ``{"key": "/name", "offset": 0, "byte_size": N}``."""
        body = await _repository_body(request, SystemSharedMemoryRegisterRequest, required=True)
        ops.system_shared_memory_register(name, body.key, body.offset, body.byte_size)
        return Response(status_code=200)

    @app.post(cuda + "/region/{name}/register", tags=["v2"], responses=_ERRORS)
    async def cuda_shared_memory_register(name: str) -> Response:
        """Not supported: CUDA shared memory needs a GPU build (400 saying so)."""
        ops.cuda_shared_memory_register()

    for prefix, unregister, status in ((system, ops.system_shared_memory_unregister, ops.system_shared_memory_status),
                                       (cuda, ops.cuda_shared_memory_unregister, ops.cuda_shared_memory_status)):
        _add_region_routes(app, prefix, unregister, status)


def _add_region_routes(app: FastAPI, prefix: str, unregister, status) -> None:
    """A shared-memory kind's unregister and status routes, for one region and for all (``name`` None)."""
    kind = prefix.rsplit("/", 1)[-1]

    async def unregister_region(name: str | None = None) -> Response:
        """Unregister a region (all without a name); a request under way keeps it mapped until answered."""
        unregister(name)
        return Response(status_code=200)

    async def region_status(name: str | None = None) -> list[SharedMemoryRegionStatus]:
        return status(name)

    for path, endpoint, method in ((prefix + "/region/{name}/unregister", unregister_region, "POST"), (prefix + "/unregister", unregister_region, "POST"),
                                   (prefix + "/region/{name}/status", region_status, "GET"), (prefix + "/status", region_status, "GET")):
        name = f"{kind}_{endpoint.__name__}" + ("" if "{name}" in path else "_all")
        app.add_api_route(path, endpoint, methods=[method], tags=["v2"], responses=_ERRORS, name=name, operation_id=name)


async def _repository_body(request: Request, model, required: bool = False):
    """The JSON body of a model-repository or shared-memory request (optional unless ``required``), validated
    strictly (400 saying what is wrong)."""
    body = await request.body()
    if not body.strip() and not required:
        return model()
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise bad_request(f"invalid {request.url.path.rsplit('/', 1)[-1]} request: {'.'.join(map(str, first['loc'])) or 'body'}: {first['msg']}") from None


def _add_model_routes(app: FastAPI, prefix: str, suffix: str, handler, **route) -> None:
    """Route ``prefix + suffix`` (newest version) and ``prefix/versions/{version} + suffix`` to one handler."""

    async def newest(request: Request, model: str):
        return await handler(request, model)

    async def versioned(request: Request, model: str, version: str):
        return await handler(request, model, version)

    for path, endpoint in ((prefix + suffix, newest), (prefix + "/versions/{version}" + suffix, versioned)):
        endpoint.__doc__ = handler.__doc__
        endpoint.__name__ = f"{handler.__name__}_{endpoint.__name__}"
        app.add_api_route(path, endpoint, **route)


# --- V1 classify ------------------------------------------------------------------------


def _add_v1_routes(app: FastAPI, ops: Operations) -> None:
    settings, decoder = ops.settings, ops.decoder

    async def classify(request: Request, model: str, version: str | None = None) -> ClassifyResponse:
        """Top-k labels with probabilities for one or many images.

        Send multipart/form-data with one or more image files (any field name; a
        ``top_k`` form field is optional), or JSON ``{"images": [base64, ...], "top_k": 5}``.
        Images are decoded with Pillow, converted to the model's channels and resized
        to its input size.
        """
        named_images, top_k = await _read_images(request)

        async def decode(served: ServedModel, regions):
            # Always off the loop: a few KB of file can hold 88 Mpx to decode.
            image = served.interface.image
            if image is None:
                raise bad_request(
                    f"model {served.name} has no image input to classify files for: its config.pbtxt declares input "
                    f"{served.interface.input.name!r} without format FORMAT_NCHW or FORMAT_NHWC of 1 or 3 channels; send it tensors "
                    "through V2 infer"
                )
            pixels = await decoder.run(INLINE_BYTES, True, images_pixels, named_images, image, settings.max_image_pixels)
            return None, pixels, None

        async def encode(served: ServedModel, regions, read, logits):
            return ClassifyResponse(
                model_name=served.name,
                model_version=str(served.version),
                predictions=[_top(served, name, p, top_k) for (name, _), p in zip(named_images, softmax(logits.reshape(len(logits), -1)))],
            )

        return await unless_disconnected(ops.infer(model, version, decode, encode), disconnected(request.receive))

    body_doc = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["images"],
                        "properties": {
                            "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                            "top_k": {"type": "integer", "minimum": 1, "default": 5},
                        },
                    }
                },
                "application/json": {"schema": {"$ref": "#/components/schemas/ClassifyRequest"}},
            },
        }
    }
    _add_model_routes(
        app, "/v1/models/{model}", "/classify", classify, methods=["POST"], response_model=ClassifyResponse, tags=["v1"],
        responses=_ERRORS, openapi_extra=body_doc,
    )


async def _read_images(request: Request) -> tuple[list[tuple[str, bytes]], int]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        files = [(v.filename or key, await v.read()) for key, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise bad_request("multipart body has no image files; attach them as file fields, e.g. curl -F images=@shirt.png")
        top_k = form.get("top_k", "5")
        # isascii: str.isdigit also takes "²", which int() refuses; 9 digits: any count of labels, and no 4300-digit int()
        if not isinstance(top_k, str) or not (top_k.isascii() and top_k.isdigit() and len(top_k) <= 9) or int(top_k) < 1:
            raise bad_request(f"top_k must be a positive integer, got {top_k!r}")
        return files, int(top_k)
    if content_type.startswith("application/json"):
        try:
            parsed = ClassifyRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            raise bad_request(f"invalid classify request: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
        images = []
        for i, text in enumerate(parsed.images):
            try:
                images.append((str(i), base64.b64decode(text, validate=True)))
            except (binascii.Error, ValueError):
                raise bad_request(f"images[{i}] is not valid base64") from None
        return images, parsed.top_k
    raise ServeError(415, f"Content-Type {content_type or 'none'!r} not supported; send multipart/form-data files or application/json with base64 images")


def _top(served: ServedModel, name: str, probabilities: np.ndarray, k: int) -> ImagePrediction:
    best = np.argsort(-probabilities, kind="stable")[:k]
    labels = served.interface.labels
    return ImagePrediction(image=name, top=[LabelScore(label=labels[i] if labels else str(i), index=int(i), probability=float(probabilities[i]))
                                            for i in best])


# --- errors and OpenAPI -----------------------------------------------------------------


def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as ``{"error": "..."}``, the V2 protocol's error body."""

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        return JSONResponse({"error": f"invalid request: {'.'.join(map(str, first['loc']))}: {first['msg']}"}, 400)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": for the access log, nobody reads it

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal server error: {type(exc).__name__}"}, 500)


def _add_docs(app: FastAPI) -> None:
    """Swagger UI at /docs, its files served from the swagger-ui-bundle package: no CDN, so it works offline."""
    import swagger_ui_bundle

    app.mount(DOCS_ASSETS.rstrip("/"), StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} - docs", oauth2_redirect_url=DOCS_OAUTH2_PATH,
            swagger_js_url=DOCS_ASSETS + "swagger-ui-bundle.js", swagger_css_url=DOCS_ASSETS + "swagger-ui.css",
            swagger_favicon_url=DOCS_ASSETS + "favicon-32x32.png",
        )

    @app.get(DOCS_OAUTH2_PATH, include_in_schema=False)
    async def oauth2_redirect() -> Response:
        return get_swagger_ui_oauth2_redirect_html()


def _document_infer_body(app: FastAPI) -> None:
    """Describe infer (InferRoute's, read raw because of the binary extension) and the request bodies read
    raw in the OpenAPI document: FastAPI's documented way to extend it ("Extending OpenAPI")."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (InferenceRequest, InferenceResponse, ErrorResponse, ClassifyRequest):
            definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(definition.pop("$defs", {}))
            components[model.__name__] = definition
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
        for path in INFER_PATHS:
            parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in ("model", "version") if f"{{{name}}}" in path]
            schema["paths"][path] = {"post": {
                "tags": ["v2"], "summary": "Infer", "operationId": "infer_" + ("versioned" if "version" in path else "newest"),
                "parameters": parameters,
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
                    "application/octet-stream": {
                        "schema": {"type": "string", "format": "binary"},
                        "description": "binary tensor extension: JSON header of Inference-Header-Content-Length bytes, then raw tensors",
                    },
                }},
                "responses": {"200": {"description": "the outputs", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferenceResponse"}}}},
                              **{str(code): {"description": "error", **error} for code in _ERRORS}},
            }}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
