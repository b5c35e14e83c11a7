"""Commands of the serve stage: `elunet serve` and its client, `elunet classify`.

Only light imports at module level: `elunet --help` must not load uvicorn,
onnxruntime or torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from elunet.serve.settings import ServeSettings, env_name, option_name


def _help(field: str) -> str:
    info = ServeSettings.model_fields[field]
    default = "" if info.is_required() or info.default is None else f"; default {info.default}"
    return f"{info.description}{default} (env {env_name(field)})"


def _opt(field: str, *flags: str, metavar: str | None = None):
    return typer.Option(None, *(flags or (option_name(field),)), help=_help(field), show_default=False, metavar=metavar)


def serve(
    repository: Optional[Path] = _opt("repository"),
    models: Optional[str] = _opt("models"),
    model_control_mode: Optional[str] = _opt("model_control_mode", metavar="none|poll|explicit"),
    repository_poll_secs: Optional[float] = _opt("repository_poll_secs"),
    load_model: Optional[list[str]] = _opt("load_model", metavar="NAME"),
    strict_readiness: Optional[str] = _opt("strict_readiness", metavar="true|false"),
    allow_unverified: Optional[str] = _opt("allow_unverified", metavar="true|false|NAME[,NAME...]"),
    host: Optional[str] = _opt("host"),
    port: Optional[int] = _opt("port"),
    grpc_port: Optional[int] = _opt("grpc_port"),
    metrics_port: Optional[int] = _opt("metrics_port"),
    backend: Optional[str] = _opt("backend"),
    device: Optional[str] = _opt("device"),
    max_batch_size: Optional[int] = _opt("max_batch_size"),
    max_queue_delay_ms: Optional[float] = _opt("max_queue_delay_ms"),
    max_queue_size: Optional[int] = _opt("max_queue_size"),
    request_timeout_s: Optional[float] = _opt("request_timeout_s", "--request-timeout-s", "--request-timeout"),
    instances: Optional[int] = _opt("instances"),
    cpu_threads: Optional[int] = _opt("cpu_threads"),
    decode_workers: Optional[int] = _opt("decode_workers"),
    api_key: Optional[str] = _opt("api_key"),
    open_endpoints: Optional[str] = _opt("open_endpoints", metavar="GROUPS"),
    cors_allow_origins: Optional[str] = _opt("cors_allow_origins", metavar="ORIGINS"),
    allow_non_finite: Optional[str] = _opt("allow_non_finite", metavar="true|false"),
    max_body_bytes: Optional[int] = _opt("max_body_bytes"),
    max_image_pixels: Optional[int] = _opt("max_image_pixels"),
    body_timeout_s: Optional[float] = _opt("body_timeout_s"),
    header_timeout_s: Optional[float] = _opt("header_timeout_s"),
    keep_alive_timeout_s: Optional[float] = _opt("keep_alive_timeout_s"),
    max_connections: Optional[int] = _opt("max_connections"),
    event_loop: Optional[str] = _opt("event_loop", metavar="asyncio|uvloop"),
    log_level: Optional[str] = _opt("log_level"),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML settings file; keys are the option names with '_' (env ELUNET_CONFIG)"),
) -> None:
    """Serve every model of a model repository over HTTP and gRPC (KServe V2 / Triton's protocol).

    HTTP routes: GET /v2/health/ready, GET /v2/models/NAME (also .../config, .../stats), POST /v2/models/NAME/infer
    (JSON or binary tensors, classification), POST /v2/repository/index and .../models/NAME/load|unload,
    POST /v1/models/NAME/classify (image files), GET /metrics (Triton's nv_inference_* metrics; also on
    --metrics-port), docs at /docs. gRPC on --grpc-port: Triton's GRPCInferenceService and grpc.health.v1
    (tritonclient.http and .grpc both work). Priority of settings: option > environment variable > --config
    file > default. A model with a config.pbtxt (Triton's ModelConfig) is scheduled by it as Triton reads
    it; the scheduling options apply to model folders without one (and max batch size and instances
    where config.pbtxt leaves them unset).

    Example: elunet serve --repository runs/demo/repository --port 8000 --max-batch-size 64
    """
    given = {name: value for name, value in locals().items() if name != "config"}
    from elunet.serve.server import serve as run_server
    from elunet.serve.settings import load_settings

    run_server(load_settings(given, config_file=config))


def classify(
    images: list[Path] = typer.Argument(..., help="image files (PNG, JPEG, WebP, ...)", exists=True, dir_okay=False),
    model: str = typer.Option(..., "--model", "-m", help="model name in the server's repository"),
    url: str = typer.Option("http://127.0.0.1:8000", help="server address"),
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, help="labels per image"),
    api_key: Optional[str] = typer.Option(None, envvar=env_name("api_key"), help="bearer token, if the server has one"),
    timeout: float = typer.Option(30.0, help="seconds to wait for the answer"),
    wait: float = typer.Option(0.0, help="first wait up to this many seconds for the server to be ready (for scripts)"),
) -> None:
    """Classify image files with a running `elunet serve` (POST /v1/models/MODEL/classify).

    Example: elunet classify shirt.png --model fashion-cnn-elu
    """
    from elunet.serve.client import classify_files, wait_until_ready

    if wait > 0:
        wait_until_ready(url, wait)
    for prediction in classify_files(url, model, images, top_k=top_k, api_key=api_key, timeout=timeout):
        best = ", ".join(f"{s['label']} {s['probability']:.3f}" for s in prediction["top"])
        typer.echo(f"{prediction['image']}: {best}")


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root `elunet` app."""
    app.command()(serve)
    app.command()(classify)
