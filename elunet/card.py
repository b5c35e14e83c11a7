"""The model card: the one description of a model that every stage reads.

Training writes it beside the weights, export copies it into the ONNX
``metadata_props`` and the model repository (adding an ``export`` section), and
the server takes the input shape, labels and preprocessing from it. Nothing
else restates these facts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from elunet.contracts import INPUT_LAYOUT, INPUT_RANGE, MODEL_NAME_RE, MODEL_NAME_RULE
from elunet.dtypes import GRAPH_DTYPES, IO_DTYPES
from elunet.errors import ElunetError
from elunet.files import write_atomic

CARD_FORMAT = 1
CARD_FILE = "card.json"
# The key under which the card travels inside ONNX metadata_props.
ONNX_METADATA_KEY = "elunet.card"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Preprocessing(_Strict):
    """What the server does to an image before the graph sees it.

    The normalization itself (mean/std, GCN, ZCA) is inside the network, so a
    client only has to deliver pixels in ``range``, in ``layout``.
    """

    layout: Literal["NCHW"] = INPUT_LAYOUT
    range: tuple[float, float] = INPUT_RANGE
    channels: int = Field(ge=1, le=4)
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    color_mode: Literal["L", "RGB"]
    normalization: str = Field(description="normalization module inside the graph, e.g. 'meanstd' or 'gcn+zca'")


class AccuracyGate(_Strict):
    """What a quantized (int8) export must keep, measured on the whole test split of its dataset.

    Element-wise tolerances mean nothing for an int8 graph; accuracy and top-1
    agreement with float32 PyTorch are what its users measure. The card states
    the gate an export was held to, parity.json the figures it reached
    (export/verify.py), both with these field names.
    """

    max_accuracy_drop_points: float = Field(ge=0, le=100, description="test accuracy may fall at most this many percentage points below float32's")
    min_top1_agreement: float = Field(ge=0, le=1, description="fraction of test images whose top-1 class equals float32's")


class QuantizationInfo(_Strict):
    """How an int8 graph was made (export/quantize.py)."""

    tool: str  # e.g. "onnxruntime.quantization 1.32.0 quantize_static"
    format: Literal["QDQ"] = "QDQ"
    weights: str  # e.g. "int8, symmetric, per output channel"
    activations: str  # e.g. "int8, symmetric, per tensor"
    elu: str  # how the ELU layers compute (graph_checks.check_qdq_graph holds the graph to it)
    calibration_method: str  # one of export/settings.CALIBRATION_METHODS
    calibration_images: int = Field(ge=1)
    calibration_split: str  # the dataset split the calibration images come from ("train")
    calibration_seed: int
    gate: AccuracyGate


class ExportInfo(_Strict):
    elu_mode: Literal["native", "plugin"]
    opset: int
    dtype: Literal[GRAPH_DTYPES]  # what the graph computes in
    # the element type of the graph's input and output tensors (elunet exports keep them float32
    # for every dtype; see export/settings.py)
    io_dtype: Literal[IO_DTYPES] = "fp32"
    exporter: str
    source_checkpoint_sha256: str
    parity: Literal["passed", "skipped"]
    quantization: QuantizationInfo | None = None  # int8 graphs only


class ModelCard(_Strict):
    format: int = CARD_FORMAT
    name: str
    version: int = Field(default=1, ge=1)
    architecture: str
    activation: str
    alpha: float | None = None
    batch_norm: bool = False
    dataset: str
    labels: list[str] = Field(min_length=2)
    preprocessing: Preprocessing
    metrics: dict[str, float] = Field(default_factory=dict)
    training: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    weights_sha256: str | None = None
    export: ExportInfo | None = None

    @field_validator("name")
    @classmethod
    def _name_is_a_safe_folder_name(cls, name: str) -> str:
        if not MODEL_NAME_RE.match(name):
            raise ValueError(f"model name {name!r} must be {MODEL_NAME_RULE}")
        return name

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        p = self.preprocessing
        return (p.channels, p.height, p.width)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "card") -> "ModelCard":
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ElunetError(
                f"{source} is not a valid elunet model card:\n{exc}",
                hint="cards are written by `elunet train` and `elunet export`; do not edit them by hand",
            ) from None

    def save(self, path: Path) -> None:
        write_atomic(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: Path) -> "ModelCard":
        path = Path(path)
        if not path.is_file():
            raise ElunetError(f"no model card at {path}", hint="point at a checkpoint or model-repository folder that holds card.json")
        return cls.from_json(path.read_text(), source=str(path))

