"""Every setting of `elunet serve`, defined once.

A setting comes from (highest priority first) a command-line option, an
environment variable ``ELUNET_<FIELD NAME IN CAPITALS>`` (e.g.
``ELUNET_MAX_BATCH_SIZE``), a TOML settings file (``--config`` or
``ELUNET_CONFIG``; keys are the field names below), or the default here. The
environment variable names are derived from the field names, so the
deployment files, the CLI and this module cannot disagree.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from elunet.errors import ElunetError
from elunet.model_config import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_QUEUE_DELAY_US
from elunet.repository import check_model_name

ENV_PREFIX = "ELUNET_"
# The environment variable that names the settings file (it is not a setting itself).
CONFIG_ENV = f"{ENV_PREFIX}CONFIG"
DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")

Backend = Literal["auto", "onnxruntime", "tensorrt", "torch"]
# --instances when config.pbtxt names no instance_group: 0, each model version's count chosen at
# warm-up (serve/scheduling.py's Scheduling.with_auto_instances; benchmarks/serve_defaults.py).
AUTO_INSTANCES = 0
# Triton computes on NaN and ±Inf input (perf_analyzer's default input, random bytes, holds some), so elunet
# does too; refusing them (and the non-finite logits they give) with 400 is the option.
ALLOW_NON_FINITE = True
# The strings pydantic reads as booleans (its lax mode); any other --allow-unverified value names models.
BOOLEAN_WORDS = frozenset({"0", "off", "f", "false", "n", "no", "1", "on", "t", "true", "y", "yes"})


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    repository: Path = Field(description="model repository folder written by `elunet export --repository`")
    models: list[str] | None = Field(
        None, description="serve only these models (comma-separated names); default: every model in the repository"
    )
    model_control_mode: Literal["none", "poll", "explicit"] = Field(
        "none",
        description="none: load the repository at start; poll: also follow its changes while serving; explicit: load only "
        "what --load-model or the load API names (Triton's model control modes)",
    )
    repository_poll_secs: float = Field(15.0, gt=0, description="poll mode: seconds between two scans of the repository")
    load_model: list[str] | None = Field(
        None, description="explicit mode: models to load at start (comma-separated, or the option repeated; * for all)"
    )
    strict_readiness: bool = Field(
        True, description="ready only when every model asked for is ready (true), or when at least one is (false)"
    )
    allow_unverified: bool | list[str] = Field(
        False, description="also serve, marked parity unverified in their metadata, model versions without a passed parity certificate "
        "(parity.json) and plain Triton models (a config.pbtxt and a model file, no card.json): true for every model, false for "
        "none, or the names of the models allowed (comma-separated)"
    )
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 inside a container)")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0 picks a free one)")
    metrics_port: int = Field(
        8002, ge=0, le=65535, description="port of Triton's metrics endpoint (/metrics alone, as on the HTTP port); 0: none"
    )
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC port (Triton's GRPCInferenceService and grpc.health.v1); 0: no gRPC")
    backend: Backend = Field(
        "auto", description="inference backend; auto tries TensorRT, then ONNX Runtime CUDA, then ONNX Runtime CPU"
    )
    device: str | None = Field(None, description="cpu, cuda or cuda:N; unset lets the backend choice decide")
    # The scheduling settings below are for model folders without a config.pbtxt; of a config.pbtxt, which
    # Triton's meaning of 0 and absent decides, only an unset max_batch_size or instance_group falls back to
    # them (serve/scheduling.py).
    max_batch_size: int = Field(
        DEFAULT_MAX_BATCH_SIZE, ge=1, description="largest batch, for models without a config.pbtxt or whose config.pbtxt sets no max_batch_size"
    )
    max_queue_delay_ms: float = Field(
        DEFAULT_MAX_QUEUE_DELAY_US / 1000,
        ge=0,
        description="a batch leaves once its oldest request has waited this long, for models without a config.pbtxt (with one, "
        "dynamic_batching.max_queue_delay_microseconds decides, absent or 0 meaning no delay, as in Triton)",
    )
    max_queue_size: int = Field(
        1024, ge=0, description="requests that may wait per model before requests get 503 (0: no limit), for models without a "
        "config.pbtxt (with one, its default_queue_policy.max_queue_size decides, absent or 0 meaning no limit, as in Triton)"
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="a request not answered within this time gets 504, for models without a config.pbtxt (with one, its "
        "default_queue_policy.default_timeout_microseconds decides, absent or 0 meaning none, as in Triton); also how long a "
        "shutdown waits for the requests under way"
    )
    instances: int = Field(
        AUTO_INSTANCES, ge=0, description="model instances per model version (batches computed at once), unless config.pbtxt has an "
        "instance_group; 0: chosen per model at warm-up, 1 for a model that computes an image faster than the server takes a "
        "request in, else 2"
    )
    cpu_threads: int = Field(
        0, ge=0, description="intra-op CPU threads per instance; 0: the CPUs this process may use, shared out among all instances"
    )
    decode_workers: int = Field(
        0, ge=0, description="worker processes (and threads) that decode request bodies and image files off the event loop; 0: one "
        "per CPU this process may use"
    )
    api_key: SecretStr | None = Field(None, description="if set, every request except those of --open-endpoints needs 'Authorization: Bearer <key>'")
    open_endpoints: list[str] = Field(
        ["health", "metrics", "docs"],
        description="endpoint groups that need no API key when one is set (comma-separated: health, metrics, docs; 'none' for none)",
    )
    cors_allow_origins: list[str] | None = Field(
        None, description="browser origins allowed to call the API (CORS; comma-separated, * for any); default: no CORS headers"
    )
    allow_non_finite: bool = Field(
        ALLOW_NON_FINITE, description="compute on NaN and ±Inf input values and answer non-finite logits, as Triton does (JSON "
        "null); false refuses both with 400 saying where the first one is"
    )
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="request bodies larger than this get 413")
    max_image_pixels: int = Field(
        25_000_000, ge=1, description="images with more pixels get 413 (decoding one costs CPU time in proportion to its pixels)"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="a request body not received whole within this time gets 408; below the shutdown grace period "
        "(--request-timeout-s + 5 s). A client that reads none of its response is bounded at the edge (nginx send_timeout)"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="gRPC: a connection whose HTTP/2 handshake is not complete within this time is closed. For HTTP/1.1 "
        "header time, put the Compose deployment's nginx in front (client_header_timeout)"
    )
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="an idle connection is closed this long after its last response")
    max_connections: int = Field(
        1000, ge=1, description="HTTP connections or requests under way beyond this get 503 (uvicorn's limit_concurrency), health "
        "probes too; the gRPC streams at once"
    )
    event_loop: Literal["asyncio", "uvloop"] = Field(
        "asyncio",
        description="the event loop: asyncio keeps accepting new connections under overload; uvloop did not (health probes on "
        "new connections went unanswered under overload: benchmarks/serve_overload.py)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log verbosity")

    @field_validator("models", "load_model", "open_endpoints", "cors_allow_origins", mode="before")
    @classmethod
    def _comma_separated(cls, names):
        return _names(names)

    @field_validator("allow_unverified", mode="before")
    @classmethod
    def _boolean_or_names(cls, value):
        """A boolean as pydantic reads one ("true", "0", ...), else comma-separated model names."""
        if not isinstance(value, (str, list)) or (isinstance(value, str) and value.strip().lower() in BOOLEAN_WORDS):
            return value
        try:
            return [check_model_name(name) for name in _names(value) or []]
        except ElunetError as exc:
            raise ValueError(f"{exc.message}: give true, false or model names ({exc.hint})") from None

    def unverified_allowed(self, model: str) -> bool:
        """Whether ``model`` may serve unverified (--allow-unverified true, or names it)."""
        return self.allow_unverified is True or (isinstance(self.allow_unverified, list) and model in self.allow_unverified)

    @field_validator("load_model")
    @classmethod
    def _star_alone(cls, names: list[str] | None) -> list[str] | None:
        if names and "*" in names and len(names) > 1:
            raise ValueError("* (every model) must be the only --load-model")
        return names

    @field_validator("open_endpoints")
    @classmethod
    def _known_groups(cls, groups: list[str] | None) -> list[str]:
        from elunet.serve.protocol import ENDPOINT_GROUPS

        groups = [g for g in groups or [] if g != "none"]
        unknown = sorted(set(groups) - set(ENDPOINT_GROUPS))
        if unknown:
            raise ValueError(f"unknown endpoint groups {unknown}; the groups are {', '.join(ENDPOINT_GROUPS)} (or none)")
        return groups

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str | None) -> str | None:
        if device is not None and not DEVICE_RE.match(device):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}")
        return device


def _names(names: str | list | None) -> list[str] | None:
    """Comma-separated names, from one string or several (an option repeated), blanks dropped; None for none."""
    if isinstance(names, str):
        names = [names]
    if names is not None:
        names = [name.strip() for value in names for name in str(value).split(",") if name.strip()]
    return names or None


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return ENV_PREFIX + field.upper()


def option_name(field: str) -> str:
    """The command-line option that sets ``field``."""
    return "--" + field.replace("_", "-")


def env_names() -> dict[str, str]:
    """Field name -> environment variable name, for every setting."""
    return {name: env_name(name) for name in ServeSettings.model_fields}


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServeSettings:
    """Merge defaults < settings file < environment < ``overrides`` (None values are ignored)."""
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    config_file = config_file or (Path(environ[CONFIG_ENV]) if environ.get(CONFIG_ENV) else None)
    if config_file is not None:
        merged.update(_read_settings_file(Path(config_file)))
    for field, var in env_names().items():
        if environ.get(var, "") != "":
            merged[field] = environ[var]
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if "repository" not in merged:
        raise ElunetError(
            "no model repository given",
            hint=f"pass --repository DIR, set {env_name('repository')}, or put repository = \"DIR\" in the settings file",
        )
    try:
        return ServeSettings.model_validate(merged)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {field} (option {option_name(field)}, env {env_name(field)}): {err['msg']}, got {err.get('input')!r}")
        raise ElunetError("invalid serve settings:\n" + "\n".join(lines), hint="see `elunet serve --help`") from None


def _read_settings_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ElunetError(f"settings file {path} does not exist", hint="--config expects a TOML file with keys such as port = 8000")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ElunetError(f"settings file {path} is not valid TOML: {exc}", hint="write key = value lines, e.g. max_batch_size = 32") from None
    unknown = sorted(set(data) - set(ServeSettings.model_fields))
    if unknown:
        raise ElunetError(
            f"settings file {path} has unknown keys {unknown}",
            hint=f"known keys: {', '.join(ServeSettings.model_fields)}",
        )
    return data
