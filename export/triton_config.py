"""Triton's model configuration (config.pbtxt), written from the model card.

One writer for every platform the repository holds: ``onnxruntime_onnx``
(elunet export) and ``tensorrt_plan`` (the plugins stage's engines). The text
is protobuf text format of Triton's ``inference.ModelConfig``; the tests parse
it with tritonclient's ``model_config_pb2``.

Dims exclude the batch axis (``max_batch_size`` > 0 tells Triton the first
axis is the batch). ``label_filename`` on the output makes Triton's
classification extension answer with class names from labels.txt.
"""

from __future__ import annotations

from elunet.card import ModelCard
from elunet.contracts import INPUT_NAME, OUTPUT_NAME
from elunet.errors import ElunetError
from elunet.repository import LABELS_FILE, MODEL_FILES, check_model_name

TRITON_TYPES = {"fp32": "TYPE_FP32", "fp16": "TYPE_FP16"}
DEFAULT_MAX_BATCH_SIZE = 64
# How long Triton's dynamic batcher may hold a request to fill a batch.
DEFAULT_MAX_QUEUE_DELAY_US = 2000


def triton_config(
    card: ModelCard,
    *,
    name: str,
    platform: str,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    io_dtype: str = "fp32",
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
) -> str:
    """The config.pbtxt text for model ``name`` described by ``card``.

    ``platform`` is a key of elunet.repository.MODEL_FILES (``onnxruntime_onnx``
    or ``tensorrt_plan``); ``io_dtype`` is the element type of the model's input
    and output tensors ("fp32" for elunet's ONNX exports of either dtype).
    """
    check_model_name(name)
    if platform not in MODEL_FILES:
        raise ElunetError(f"unknown Triton platform {platform!r}", hint=f"choose one of: {', '.join(MODEL_FILES)}")
    if io_dtype not in TRITON_TYPES:
        raise ElunetError(f"unknown I/O dtype {io_dtype!r}", hint=f"choose one of: {', '.join(TRITON_TYPES)}")
    if max_batch_size < 1:
        raise ElunetError(f"max_batch_size must be >= 1, got {max_batch_size}", hint="elunet models always take a batch axis")
    data_type = TRITON_TYPES[io_dtype]
    dims_in = ", ".join(str(d) for d in card.input_shape)
    return f"""\
# Triton Inference Server model configuration, written by elunet from the model card.
name: "{name}"
platform: "{platform}"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: {data_type}
    format: FORMAT_NCHW
    dims: [ {dims_in} ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: {data_type}
    dims: [ {card.num_classes} ]
    label_filename: "{LABELS_FILE}"
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
# Every version folder is served, so versions can be compared side by side.
version_policy: {{ all {{ }} }}
"""


def labels_text(card: ModelCard) -> str:
    """labels.txt: one class name per line, line i = class index i."""
    bad = [label for label in card.labels if "\n" in label or "\r" in label]
    if bad:
        raise ElunetError(f"labels must be single lines for {LABELS_FILE}, got {bad!r}", hint="fix the dataset's class names")
    return "".join(f"{label}\n" for label in card.labels)
