"""The wire types of the KServe V2 / Open Inference Protocol (REST), defined once.

They validate request headers, fill the OpenAPI document at /docs and shape
every response. The same protocol is spoken by Triton, KServe and MLServer,
so their clients (e.g. ``tritonclient.http``) work unmodified. The
``/v1/.../classify`` convenience endpoint has its types at the end.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from elunet.dtypes import BY_NAME, DTYPES
from elunet.model_config import BYTES

SERVER_NAME = "elunet"
# Exactly the Triton protocol extensions implemented here, by Triton's names.
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "model_repository", "model_repository(unload_dependents)", "statistics",
              "system_shared_memory"]
# Where elunet deliberately differs from Triton on the same repository, said at start-up (docs/triton-compatibility.md
# has the whole table).
TRITON_DIFFERENCES = (
    "a model version serves only with a passed parity certificate for the backend and device it runs on; others, and plain Triton models "
    "(no card.json), only where --allow-unverified allows them (true, or their names)",
    "a plain Triton model's config.pbtxt must declare its input and output (no auto-complete from the model file) and max_batch_size >= 1",
    "without an instance_group, the instance count is chosen per model at warm-up (1 or 2 on CPU), where Triton creates one",
    "models are image classifiers with one input and one output; a BYTES input only as an image model's encoded image files, decoded by the "
    "server (elunet export --image-model), where Triton needs a preprocessing model in an ensemble; ensembles, sequence batching and "
    "decoupled models are refused",
    "the CUDA shared-memory, trace and logging extensions are not implemented",
)

# The paths of each endpoint group that --open-endpoints can leave open when an API key is set
# (probes and scrapers often carry no key).
LIVE_PATH, READY_PATH = "/v2/health/live", "/v2/health/ready"
METRICS_PATH = "/metrics"
DOCS_PATH, DOCS_OAUTH2_PATH, OPENAPI_PATH = "/docs", "/docs/oauth2-redirect", "/openapi.json"
ENDPOINT_GROUPS = {
    "health": (LIVE_PATH, READY_PATH),
    "metrics": (METRICS_PATH,),
    "docs": (DOCS_PATH, DOCS_OAUTH2_PATH, OPENAPI_PATH),
}
# Swagger UI's files, served from the swagger-ui-bundle package (the docs work offline).
DOCS_ASSETS = "/docs/static/"

# Parameters may carry any JSON scalar (the binary extension uses
# binary_data_size, binary_data, binary_data_output; Triton also sends timeout).
Parameters = dict[str, bool | int | float | str]

# V2 datatype name -> numpy dtype name, for the datatypes this server accepts as input.
INPUT_DATATYPES = {d.v2: d.numpy for d in DTYPES}
OUTPUT_DATATYPE = BY_NAME["fp32"].v2
# What a raw binary request (no JSON header) carries: elunet models take float32 pixels.
RAW_DATATYPE = BY_NAME["fp32"].v2
# Triton's classification extension answers strings.
CLASSIFICATION_DATATYPE = BYTES
# UINT8 pixels are scaled by this to reach the model's [0, 1] input range.
UINT8_SCALE = 1.0 / 255.0


class _Wire(BaseModel):
    # Clients add fields of extensions we do not implement; ignore them rather than fail.
    model_config = ConfigDict(extra="ignore")


class ErrorResponse(_Wire):
    error: str


class ServerMetadata(_Wire):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(_Wire):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(_Wire):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    # elunet's: {"parity": "passed" | "unverified", "image_input": "NCHW RGB 32x32, pixels in [0, 1]" (an image input only)}
    parameters: Parameters | None = None


class RequestInput(_Wire):
    name: str
    shape: list[int] = Field(max_length=8)
    datatype: str
    parameters: Parameters | None = None
    # Nested or flat list of numbers; absent when the tensor travels in the binary section.
    data: list[Any] | None = None


class RequestOutput(_Wire):
    name: str
    parameters: Parameters | None = None


class InferenceRequest(_Wire):
    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(_Wire):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    # numbers, or "value:index:label" strings for the classification extension
    data: list[float] | list[str] | None = None


class InferenceResponse(_Wire):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class ModelState(_Wire):
    name: str
    version: str = ""
    state: str
    reason: str = ""


class _StrictWire(_Wire):
    # The model-repository extension's request bodies: a misspelt or mistyped field is an error, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


class RepositoryIndexRequest(_StrictWire):
    ready: bool = False


class RepositoryModelRequest(_StrictWire):
    """The load and unload bodies: load takes ``config`` (a ModelConfig as JSON), unload ``unload_dependents``."""

    parameters: Parameters | None = None


class SystemSharedMemoryRegisterRequest(_StrictWire):
    """Register a region of a POSIX shared-memory object: ``key`` as shm_open takes it ("/name")."""

    key: str
    offset: int = 0
    byte_size: int


class SharedMemoryRegionStatus(_Wire):
    name: str
    key: str
    offset: int
    byte_size: int


# --- /v1/models/{model}/classify -------------------------------------------------------


class ClassifyRequest(_Wire):
    images: list[str] = Field(min_length=1, description="images (PNG, JPEG, WebP, ...) encoded as base64 strings")
    # strict: true and "3" are not numbers of labels (as the multipart form's top_k is read strictly too)
    top_k: int = Field(5, ge=1, strict=True, description="how many labels to return per image")


class LabelScore(_Wire):
    label: str
    index: int
    probability: float


class ImagePrediction(_Wire):
    image: str = Field(description="the uploaded file name, or the position in the images list")
    top: list[LabelScore]


class ClassifyResponse(_Wire):
    model_name: str
    model_version: str
    predictions: list[ImagePrediction]
