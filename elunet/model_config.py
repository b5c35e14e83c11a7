"""Triton's model configuration (``config.pbtxt``), as Triton reads it: the ModelConfig protobuf in text format.

Export (and the plugins stage, for TensorRT engines) writes it from the model
card; the server reads it and schedules each model by it. Both go through the
generated ``model_config_pb2`` of tritonclient, so the file is exactly what
Triton parses, never a hand-written approximation. The batching defaults
written here are the server's defaults too (one source, see serve/settings.py).

Dims exclude the batch axis (``max_batch_size`` > 0 tells Triton the first
axis is the batch). ``label_filename`` on the output makes the classification
extension answer with class names from labels.txt.

An image model (``encoded_images``) has the same output and one input of
TYPE_STRING, Triton's name for V2's BYTES: each batch element one encoded image
file, which the server decodes with the card's preprocessing (IMAGE_INPUT).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from elunet.card import ModelCard
from elunet.contracts import IMAGE_INPUT_NAME, INPUT_NAME, OUTPUT_NAME
from elunet.dtypes import BY_NAME, BY_TRITON, IO_DTYPES
from elunet.errors import ElunetError
from elunet.repository import LABELS_FILE, MODEL_FILES, check_model_name

DEFAULT_MAX_BATCH_SIZE = 64
# How long the dynamic batcher may hold a request to fill a batch (benchmarks/serve_defaults.py).
DEFAULT_MAX_QUEUE_DELAY_US = 2000
HEADER = "# Triton Inference Server model configuration (ModelConfig, protobuf text format), written by elunet.\n"


def model_config_pb2():
    """tritonclient's generated ModelConfig module (imported on first use: it loads grpc)."""
    try:
        from tritonclient.grpc import model_config_pb2 as pb2
    except ImportError as exc:
        raise ElunetError(f"reading and writing config.pbtxt needs tritonclient[grpc]: {exc}", hint="pip install 'tritonclient[grpc]'") from None
    return pb2


def build_config(
    card: ModelCard,
    *,
    name: str,
    platform: str,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    io_dtype: str = "fp32",
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
    encoded_images: bool = False,
):
    """The ModelConfig of model ``name`` described by ``card``.

    ``platform`` is a key of elunet.repository.MODEL_FILES; ``io_dtype`` is the
    element type of the model's input and output ("fp32" for elunet's ONNX
    exports of every compute dtype); ``encoded_images``: the image model's
    config, whose input is IMAGE_INPUT.
    """
    check_model_name(name)
    if platform not in MODEL_FILES:
        raise ElunetError(f"unknown Triton platform {platform!r}", hint=f"choose one of: {', '.join(MODEL_FILES)}")
    if io_dtype not in IO_DTYPES:
        raise ElunetError(f"unknown I/O dtype {io_dtype!r}", hint=f"choose one of: {', '.join(IO_DTYPES)}")
    if max_batch_size < 1:
        raise ElunetError(f"max_batch_size must be >= 1, got {max_batch_size}", hint="elunet models always take a batch axis")
    pb2 = model_config_pb2()
    data_type = pb2.DataType.Value(BY_NAME[io_dtype].triton)
    config = pb2.ModelConfig(name=name, platform=platform, max_batch_size=max_batch_size)
    if encoded_images:
        config.input.add(name=IMAGE_INPUT.name, data_type=pb2.DataType.Value(TRITON_STRING), dims=list(IMAGE_INPUT.dims))
    else:
        config.input.add(name=INPUT_NAME, data_type=data_type, format=pb2.ModelInput.FORMAT_NCHW, dims=list(card.input_shape))
    config.output.add(name=OUTPUT_NAME, data_type=data_type, dims=[card.num_classes], label_filename=LABELS_FILE)
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    # Every version folder is served, so versions can be compared side by side.
    config.version_policy.all.SetInParent()
    return config


def config_text(config) -> str:
    from google.protobuf import text_format

    return HEADER + text_format.MessageToString(config)


def read_config(path: Path):
    """Parse ``path`` as Triton does; an ElunetError names the line that is wrong."""
    from google.protobuf import text_format

    pb2 = model_config_pb2()
    try:
        return text_format.Parse(Path(path).read_text(), pb2.ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise ElunetError(f"{path} is not a valid Triton model configuration: {exc}", hint="it is protobuf text format of inference.ModelConfig (see Triton's model_config.proto)") from None


@dataclass(frozen=True)
class TensorSignature:
    """One input or output as the model file declares it: V2 datatype, dims without the batch axis."""

    name: str
    datatype: str
    dims: tuple[int, ...]


# Triton's data type of V2's BYTES (not one of elunet.dtypes: no graph computes on it).
TRITON_STRING, BYTES = "TYPE_STRING", "BYTES"
# The image model's input: one encoded image file per batch element.
IMAGE_INPUT = TensorSignature(IMAGE_INPUT_NAME, BYTES, (1,))


def declared_image_input(config) -> TensorSignature | None:
    """IMAGE_INPUT when ``config`` (a ModelConfig, or None) declares a TYPE_STRING input: an image model's, which
    ``differences`` then holds to IMAGE_INPUT; else None (a tensor model)."""
    if config is None:
        return None
    pb2 = model_config_pb2()
    return IMAGE_INPUT if any(pb2.DataType.Name(t.data_type) == TRITON_STRING for t in config.input) else None


def differences(config, *, name: str, platforms: list[str], inputs: list[TensorSignature], outputs: list[TensorSignature]) -> list[str]:
    """Where ``config`` contradicts the model it configures (empty: it agrees).

    ``platforms``: those whose model file the version folder holds; ``inputs`` and
    ``outputs``: the signature of the model file that runs.
    """
    pb2 = model_config_pb2()
    found = []
    if config.name and config.name != name:
        found.append(f"name is {config.name!r}, the model folder is {name!r}")
    declared = config.platform or {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}.get(config.backend, config.backend)
    if declared and declared not in platforms:
        held = " and ".join(f"{MODEL_FILES[p]} ({p})" for p in platforms) or "no model file"
        found.append(f"platform is {declared!r}, which needs {MODEL_FILES.get(declared, 'a model file elunet does not run')}; the version holds {held}")
    if config.max_batch_size < 0:
        found.append(f"max_batch_size is {config.max_batch_size}, it must be >= 0")
    for kind, declared_tensors, actual in (("input", config.input, inputs), ("output", config.output, outputs)):
        by_name = {t.name: t for t in actual}
        listed = [t.name for t in declared_tensors]
        if declared_tensors and sorted(listed) != sorted(by_name):
            found.append(f"{kind}s are {listed}, the model has {sorted(by_name)}")
        for tensor in declared_tensors:
            model = by_name.get(tensor.name)
            if model is None:
                continue
            triton = pb2.DataType.Name(tensor.data_type)
            datatype = BYTES if triton == TRITON_STRING else getattr(BY_TRITON.get(triton), "v2", None)
            if datatype != model.datatype:
                found.append(f"{kind} {tensor.name!r} data_type is {pb2.DataType.Name(tensor.data_type)}, the model's is {model.datatype}")
            if not _matches(tuple(tensor.dims), model.dims):
                found.append(f"{kind} {tensor.name!r} dims are {list(tensor.dims)}, the model's are {list(model.dims)} (without the batch axis)")
            if tensor.HasField("reshape"):
                found.append(f"{kind} {tensor.name!r} has a reshape, which elunet does not apply; remove it")
    return found


def _matches(declared: tuple[int, ...], model: tuple[int, ...]) -> bool:
    """Dims agree where both are fixed; -1 on either side is a wildcard."""
    return len(declared) == len(model) and all(a == b or a == -1 or b == -1 for a, b in zip(declared, model))


def labels_text(card: ModelCard) -> str:
    """labels.txt: one class name per line, line i = class index i."""
    bad = [label for label in card.labels if "\n" in label or "\r" in label]
    if bad:
        raise ElunetError(f"labels must be single lines for {LABELS_FILE}, got {bad!r}", hint="fix the dataset's class names")
    return "".join(f"{label}\n" for label in card.labels)
