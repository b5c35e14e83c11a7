"""The FastAPI application: KServe V2 routes, /v1 classify, /metrics.

``create_app(settings)`` reads the repository's cards at once; the lifespan
then loads and warms up every model in a background task, so liveness is
answered during warm-up and readiness turns true only after it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import logging
import time

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
from elunet.errors import ElunetError
from elunet.repository import check_model_name
from elunet.serve.decoding import INLINE_BYTES, Decoder
from elunet.serve.extensions import config_from_json, effective_config, proto_json, statistics_of
from elunet.serve.inference import infer as infer_core
from elunet.serve.errors import ServeError, bad_request
from elunet.serve.images import images_pixels, softmax
from elunet.serve.metrics import ServeMetrics
from elunet.serve.middleware import AccessLog, ApiKey, BodyLimit, ConnectionLimit, TrailingSlash
from elunet.serve.models import READY, ModelRegistry, ServedModel
from elunet.serve.protocol import (
    DOCS_ASSETS,
    DOCS_OAUTH2_PATH,
    DOCS_PATH,
    EXTENSIONS,
    LIVE_PATH,
    METRICS_PATH,
    OPENAPI_PATH,
    READY_PATH,
    SERVER_NAME,
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
    TensorMetadata,
)
from elunet.serve.settings import ServeSettings
from elunet.serve.tensors import HEADER_LENGTH, decode_infer, requested_timeout_us, response_body, response_encoding

log = logging.getLogger("elunet.serve")

_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 500, 503, 504)}


def create_app(settings: ServeSettings) -> FastAPI:
    metrics = ServeMetrics()
    registry = ModelRegistry(settings, metrics)
    decoder = Decoder()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(registry.start())
        polling = asyncio.create_task(registry.poll_forever()) if settings.model_control_mode == "poll" else None
        await decoder.start()
        grpc = None
        if settings.grpc_port:
            from elunet.serve.grpc_server import grpc_server

            grpc = grpc_server(registry, settings, decoder, metrics, lambda: app.state.draining)
            await grpc.start()
            app.state.stop_grpc = lambda: asyncio.ensure_future(grpc.stop(settings.request_timeout_s))
            log.info("gRPC on %s:%d", settings.host, settings.grpc_port)
        try:
            yield
        finally:
            # Reached after the server stopped accepting and in-flight requests were answered.
            if grpc is not None:
                await grpc.stop(settings.request_timeout_s)  # answers the RPCs in flight, refuses new ones
            if polling is not None:
                polling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await polling
            await loading
            await registry.close()
            decoder.close()

    app = _App(
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
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.draining = False
    app.state.stop_grpc = lambda: None
    _install_error_handlers(app)
    infer, answer = _add_v2_routes(app, registry, settings, decoder, metrics)
    _add_v1_routes(app, registry, settings, decoder)

    @app.get(METRICS_PATH, tags=["operations"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text format: request success/failure, durations, batch sizes, queue depth."""
        return Response(metrics.render(), media_type=metrics.content_type)

    _document_infer_body(app)
    _add_docs(app)
    # Innermost first. A request meets: the path normalized, the access log, CORS (preflights carry no API
    # key), the connection limit, the API key (before any of the body is read into memory), the body read
    # whole within its limits, then the infer shortcut or FastAPI. ``passes``: each one's check that it
    # would let a request go on untouched, for the fast path.
    front = _InferShortcut(functools.partial(FastAPI.__call__, app), infer, app.exception_handlers)
    front = BodyLimit(front, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s, draining=lambda: app.state.draining)
    passes = [front.passes]
    if settings.api_key is not None:
        front = ApiKey(front, key=settings.api_key.get_secret_value(), open_groups=settings.open_endpoints)
        passes.append(front.passes)
    front = ConnectionLimit(front, max_connections=settings.max_connections)
    passes.append(front.passes)
    if settings.cors_allow_origins:
        front = CORSMiddleware(
            front, allow_origins=settings.cors_allow_origins, allow_methods=["GET", "POST"], allow_headers=["*"],
            expose_headers=[HEADER_LENGTH],  # browsers may then read binary-extension responses
        )
    app.front = TrailingSlash(AccessLog(front))
    # No fast path with CORS on: Starlette's CORS middleware touches every answer (Vary: Origin, even without an Origin).
    app.fast_path = None if settings.cors_allow_origins else _FastInfer(answer, app.exception_handlers, [TrailingSlash.passes, *passes])
    return app


class _App(FastAPI):
    """The FastAPI app behind elunet's own middlewares (serve/middleware.py) and the infer shortcut."""

    front = None  # set by create_app
    fast_path = None  # the infer requests the connections answer around ASGI (serve/connections.py); set by create_app

    async def __call__(self, scope, receive, send) -> None:
        await self.front(scope, receive, send)


class _InferShortcut:
    """POST /v2/models/{m}[/versions/{v}]/infer straight to its endpoint, around FastAPI.

    Infer is the one route under load, and FastAPI's way to it cost more of the event loop than the
    endpoint itself (py-spy and cProfile under wrk, README): the router tries the routes in order (infer
    is the 20th), and each call passes FastAPI's telemetry check, its middlewares, exit stacks and
    exception wrappers. The endpoint is the function FastAPI documents for these paths; its errors go to
    the app's exception handlers, as through FastAPI. Every other request goes to FastAPI.
    """

    def __init__(self, app, endpoint, handlers: dict):
        self.app = app
        self.endpoint = endpoint
        self.handlers = handlers

    async def __call__(self, scope, receive, send) -> None:
        params = _infer_params(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if params is None:
            return await self.app(scope, receive, send)
        request = Request(scope, receive)
        await request.body()
        try:
            response = await self.endpoint(request, *params)
        except Exception as exc:  # noqa: BLE001 - answered by the app's handler for it, as FastAPI would
            response = await _handled(self.handlers, request, exc)
        await response(scope, receive, send)


class _FastInfer:
    """Infer requests answered straight from their connection, around ASGI (``connections.FastPath``).

    Under load the ASGI way cost the event loop more than the infer work itself: uvicorn's request
    cycle, the middlewares, Starlette's request and response, each a few calls deep per message.
    This path takes only a request that every middleware would hand on untouched (``passes``: their own
    checks) with its body already whole, and answers it as the infer shortcut would: the same
    ``answer``, the same exception handlers and response headers, the same access line. Paired under wrk
    (3 alternating rounds, README "Beside MLServer"): event-loop CPU per JSON request 199-201 -> 168-170 us
    (fashion-cnn, +7-8 % requests/s), 332-334 -> 280-282 us (elu-cifar11, +2-4 %).
    """

    def __init__(self, answer, handlers: dict, passes: list):
        self._answer = answer
        self._handlers = handlers
        self._passes = passes

    def route(self, scope) -> tuple[str, str | None] | None:
        """(model, version or None) of an infer request this path takes, else None."""
        params = _infer_params(scope["path"]) if scope["method"] == "POST" else None
        if params is None or not all(passes(scope) for passes in self._passes):
            return None
        return params

    async def answer(self, scope, body: bytes, route: tuple[str, str | None], write) -> None:
        start, status, sent = time.perf_counter(), 500, 0
        try:
            try:
                content, headers = await self._answer(*route, body, scope)
                response = Response(content, headers=headers)
            except Exception as exc:  # noqa: BLE001 - answered by the app's handler for it, as through ASGI
                response = await _handled(self._handlers, Request(scope), exc)
            status, sent = response.status_code, len(response.body)
            await write(status, response.raw_headers, response.body)
        finally:
            AccessLog.line(scope, status, sent, start)


async def _handled(handlers: dict, request: Request, exc: Exception) -> Response:
    """The answer of the app's exception handler for ``exc``'s class, as FastAPI picks it."""
    handler = next(handlers[c] for c in type(exc).__mro__ if c in handlers)
    return await handler(request, exc)


def _infer_params(path: str) -> tuple[str, str | None] | None:
    """(model, version or None) when ``path`` is one of the infer routes (segments as Starlette matches them)."""
    parts = path.split("/")
    if parts[-1] != "infer" or parts[1:3] != ["v2", "models"] or not parts[3:4] or not parts[3]:
        return None
    if len(parts) == 5:
        return parts[3], None
    if len(parts) == 7 and parts[4] == "versions" and parts[5]:
        return parts[3], parts[5]
    return None


# --- V2 ---------------------------------------------------------------------------------


def _add_v2_routes(app: FastAPI, registry: ModelRegistry, settings: ServeSettings, decoder: Decoder, metrics: ServeMetrics):
    """Add the V2 routes; return the infer endpoint, ``infer(request, model, version)``, and what it answers,
    ``answer(model, version, body, scope)``."""
    @app.get("/v2", response_model=ServerMetadata, tags=["v2"])
    async def server_metadata() -> ServerMetadata:
        return ServerMetadata(name=SERVER_NAME, version=elunet.__version__, extensions=EXTENSIONS)

    @app.get(LIVE_PATH, tags=["v2"], responses=_ERRORS)
    async def server_live() -> dict:
        return {"live": True}

    @app.get(READY_PATH, tags=["v2"], responses=_ERRORS)
    async def server_ready(request: Request) -> dict:
        if request.app.state.draining:
            raise ServeError(503, "server is shutting down")
        ready, waiting = registry.readiness()
        if not ready:
            raise ServeError(503, "not ready: " + "; ".join(waiting), headers={"Retry-After": "1"})
        return {"ready": True}

    @app.post("/v2/repository/index", response_model=list[ModelState], tags=["v2"], responses=_ERRORS)
    async def repository_index(request: Request) -> list[ModelState]:
        """Every model of the repository, loaded or not, and every version served, with its state and reason."""
        body = await _repository_body(request, RepositoryIndexRequest)
        return [ModelState(name=n, version=v, state=s, reason=r) for n, v, s, r in registry.index(ready_only=body.ready)]

    @app.post("/v2/repository/models/{model}/load", tags=["v2"], responses=_ERRORS)
    async def repository_load(request: Request, model: str) -> Response:
        """Load or reload a model (``--model-control-mode explicit``); body parameter ``config``: a ModelConfig as JSON."""
        body = await _repository_body(request, RepositoryModelRequest)
        params = dict(body.parameters or {})
        config = params.pop("config", None)
        files = [k for k in params if k.startswith("file:")]
        if files or params:
            raise bad_request(f"load parameters {sorted(params)} are not supported; elunet takes 'config' (a ModelConfig as JSON) only")
        await registry.load(_model_name(model), config_from_json(config) if config is not None else None)
        return Response(status_code=200)

    @app.post("/v2/repository/models/{model}/unload", tags=["v2"], responses=_ERRORS)
    async def repository_unload(request: Request, model: str) -> Response:
        """Unload every version of a model (``--model-control-mode explicit``); ``unload_dependents`` is accepted (elunet has no ensembles)."""
        body = await _repository_body(request, RepositoryModelRequest)
        unknown = sorted(set(body.parameters or {}) - {"unload_dependents"})
        if unknown or not isinstance((body.parameters or {}).get("unload_dependents", False), bool):
            raise bad_request(f"unload takes one parameter, unload_dependents (a boolean); got {body.parameters}")
        await registry.unload(_model_name(model))
        return Response(status_code=200)

    async def metadata(request: Request, model: str, version: str | None = None) -> ModelMetadata:
        served = registry.resolve(model, version)
        engine = served.engine
        if engine is None:
            raise ServeError(503, f"model {served.name} v{served.version} is {served.state}: {served.reason}", reason="not_ready", headers={"Retry-After": "1"})
        return ModelMetadata(
            name=served.name,
            versions=[str(v) for v in sorted(registry.models[served.name])],
            platform=engine.platform,
            inputs=[TensorMetadata(name=engine.input.name, datatype=engine.input.datatype, shape=[-1, *engine.input.dims])],
            outputs=[TensorMetadata(name=engine.output.name, datatype=engine.output.datatype, shape=[-1, *engine.output.dims])],
            parameters={"parity": served.parity},
        )

    async def ready(request: Request, model: str, version: str | None = None) -> dict:
        served = registry.resolve(model, version)
        if served.state != READY:
            raise ServeError(503, f"model {served.name} v{served.version} is {served.state}: {served.reason}", headers={"Retry-After": "1"})
        return {"name": served.name, "version": str(served.version), "ready": True}

    async def infer(request: Request, model: str, version: str | None = None) -> Response:
        content, headers = await answer(model, version, await request.body(), request.scope)
        return Response(content, headers=headers)

    async def answer(model: str, version: str | None, body: bytes, scope) -> tuple[bytes, dict[str, str]]:
        """(body, headers) of the answer to an infer request of ``body``, its headers in ``scope``."""
        with registry.resolve(model, version) as served:
            return await _answer(served, body, scope)

    async def _answer(served: ServedModel, body: bytes, scope) -> tuple[bytes, dict[str, str]]:
        served.check_ready()
        header_length, content_encoding, accept_encoding = _headers(scope, b"inference-header-content-length", b"content-encoding", b"accept-encoding")
        encoding = response_encoding(accept_encoding)

        async def decode():
            # Only raw binary tensors decode without holding the interpreter lock (serve/decoding.py).
            holds_gil = header_length is None or bool(content_encoding)
            parsed, pixels = await decoder.run(
                len(body), holds_gil, decode_infer, body, header_length, content_encoding, settings.max_body_bytes, served.card.input_shape,
                settings.allow_non_finite,
            )
            return parsed, pixels, requested_timeout_us(parsed.parameters)

        async def encode(parsed, logits):
            size = logits.size * 8 + (len(body) if encoding else 0)
            return await decoder.run(size, True, response_body, parsed, served.name, served.version, logits, served.labels, encoding)

        return await infer_core(served, decode, encode, settings.request_timeout_s, settings.allow_non_finite)

    async def config(request: Request, model: str, version: str | None = None) -> dict:
        """The model configuration a version is served with (Triton's ModelConfig as JSON, completed)."""
        served = registry.resolve(model, version)
        served.check_ready()
        return proto_json(effective_config(served))

    async def model_statistics(request: Request, model: str | None = None, version: str | None = None) -> dict:
        """Triton's statistics extension: counts and cumulative durations per model version, and per batch size."""
        if model is not None:
            _model_name(model)
        return proto_json(statistics_of(metrics, set(registry.models), model, version))

    # Before the {model} routes, so that "stats" is not taken for a model name.
    app.add_api_route("/v2/models/stats", model_statistics, methods=["GET"], tags=["v2"], responses=_ERRORS)
    _add_model_routes(app, "/v2/models/{model}", "/stats", model_statistics, methods=["GET"], tags=["v2"], responses=_ERRORS)
    _add_model_routes(app, "/v2/models/{model}", "/config", config, methods=["GET"], tags=["v2"], responses=_ERRORS)

    _add_model_routes(app, "/v2/models/{model}", "", metadata, methods=["GET"], response_model=ModelMetadata, tags=["v2"], responses=_ERRORS)
    _add_model_routes(app, "/v2/models/{model}", "/ready", ready, methods=["GET"], tags=["v2"], responses=_ERRORS)
    _add_model_routes(
        app, "/v2/models/{model}", "/infer", infer, methods=["POST"], tags=["v2"], response_class=Response,
        responses={200: {"model": InferenceResponse}, **_ERRORS}, openapi_extra={"x-elunet-infer-body": True},
    )
    return infer, answer


def _headers(scope, *names: bytes) -> list[str | None]:
    """The first value of each header named (ASGI's lower-case names), in one pass over the raw headers:
    Starlette's ``request.headers.get`` decodes and scans them all again for every name (4 % of the event
    loop under load, for three names)."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        found.setdefault(name, value)
    return [found[name].decode("latin-1") if name in found else None for name in names]


async def _repository_body(request: Request, model):
    """The optional JSON body of a model-repository request, validated strictly (400 saying what is wrong)."""
    body = await request.body()
    if not body.strip():
        return model()
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise bad_request(f"invalid {request.url.path.rsplit('/', 1)[-1]} request: {'.'.join(map(str, first['loc'])) or 'body'}: {first['msg']}") from None


def _model_name(name: str) -> str:
    try:
        return check_model_name(name)
    except ElunetError as exc:
        raise bad_request(f"{exc.message}; {exc.hint}") from None


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


def _add_v1_routes(app: FastAPI, registry: ModelRegistry, settings: ServeSettings, decoder: Decoder) -> None:
    async def classify(request: Request, model: str, version: str | None = None) -> ClassifyResponse:
        """Top-k labels with probabilities for one or many images.

        Send multipart/form-data with one or more image files (any field name; a
        ``top_k`` form field is optional), or JSON ``{"images": [base64, ...], "top_k": 5}``.
        Images are decoded with Pillow, converted to the model's channels and resized
        to its input size.
        """
        with registry.resolve(model, version) as served:
            return await _classify(request, served)

    async def _classify(request: Request, served: ServedModel) -> ClassifyResponse:
        async def decode():
            named_images, top_k = await _read_images(request)
            # Always off the loop: a few KB of file can hold 88 Mpx to decode.
            pixels = await decoder.run(INLINE_BYTES, True, images_pixels, named_images, served.card.preprocessing, settings.max_image_pixels)
            return (named_images, top_k), pixels, None

        async def encode(read, logits):
            named_images, top_k = read
            return ClassifyResponse(
                model_name=served.name,
                model_version=str(served.version),
                predictions=[_top(served, name, p, top_k) for (name, _), p in zip(named_images, softmax(logits))],
            )

        return await infer_core(served, decode, encode, settings.request_timeout_s, settings.allow_non_finite)

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
    labels = served.card.labels
    return ImagePrediction(image=name, top=[LabelScore(label=labels[i], index=int(i), probability=float(probabilities[i])) for i in best])


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
    """Describe the infer body (read raw, because of the binary extension) in the OpenAPI document."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (InferenceRequest, ClassifyRequest):
            definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(definition.pop("$defs", {}))
            components[model.__name__] = definition
        for path in schema["paths"].values():
            operation = path.get("post", {})
            if operation.pop("x-elunet-infer-body", False):
                operation["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"},
                            "description": "binary tensor extension: JSON header of Inference-Header-Content-Length bytes, then raw tensors",
                        },
                    },
                }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
