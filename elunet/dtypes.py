"""Element types, named once for every place that spells them.

elunet's own names (``fp32``: cards, export settings) sit beside the names of
the same type in the V2 protocol (``FP32``), Triton's model configuration
(``TYPE_FP32``), numpy and ONNX Runtime's type strings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str  # elunet's: cards, --dtype
    v2: str  # KServe V2 / Triton protocol datatype
    triton: str  # Triton ModelConfig DataType enum name
    numpy: str
    onnxruntime: str  # NodeArg.type as ONNX Runtime reports it

    @property
    def np(self) -> np.dtype:
        return np.dtype(self.numpy)


DTYPES = (
    DType("fp32", "FP32", "TYPE_FP32", "float32", "tensor(float)"),
    DType("fp16", "FP16", "TYPE_FP16", "float16", "tensor(float16)"),
    DType("uint8", "UINT8", "TYPE_UINT8", "uint8", "tensor(uint8)"),
)
BY_NAME = {d.name: d for d in DTYPES}
BY_V2 = {d.v2: d for d in DTYPES}
BY_TRITON = {d.triton: d for d in DTYPES}
BY_NUMPY = {d.numpy: d for d in DTYPES}
BY_ONNXRUNTIME = {d.onnxruntime: d for d in DTYPES}

# What an exported graph may compute in (`elunet export --dtype`, the card's
# export.dtype). int8 is a compute type only: an int8 graph quantizes and
# dequantizes inside itself, its input and output stay one of IO_DTYPES.
GRAPH_DTYPES = ("fp32", "fp16", "int8")
# The element types of an exported graph's input and output tensors.
IO_DTYPES = ("fp32", "fp16")
