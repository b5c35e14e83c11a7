"""What an export is asked to produce, and the choices the CLI offers.

Kept free of torch and onnx so that `elunet --help` can show the choices
without importing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from elunet.dtypes import GRAPH_DTYPES
from elunet.errors import ElunetError

ELU_MODES = ("native", "plugin")
DTYPES = GRAPH_DTYPES
EXPORTERS = ("dynamo", "torchscript")
EluMode = Literal[ELU_MODES]
Dtype = Literal[DTYPES]
Exporter = Literal[EXPORTERS]

# Whatever the graph computes in, its input and output tensors are float32,
# and so is the normalization: an fp16 graph casts to half right after the
# normalization and the logits back right before the output; an int8 graph
# quantizes after the normalization and leaves the logits float32
# (export/quantize.py). Clients, the server and Triton's config see one
# interface for every dtype, and TensorRT's strongly typed networks accept
# these explicit Cast layers (everything between them is fp16).
IO_DTYPE: Dtype = "fp32"

# Opset 18 is what the torch.export-based exporter's operator library is written
# for (no version conversion), and every runtime elunet targets reads it:
# ONNX Runtime >= 1.14, TensorRT 8.6 / 10 / 11, Triton's onnxruntime backend.
DEFAULT_OPSET = 18
# The opsets each exporter can emit. For any opset but 18 the dynamo exporter
# converts its output, and when that fails it silently keeps 18, so
# to_onnx.torch_to_onnx checks what came out.
OPSET_RANGE = {"dynamo": (18, 23), "torchscript": (9, 20)}

# Quantized dtypes are traced in float32, then quantized (export/quantize.py).
QUANTIZED_DTYPES = ("int8",)
# ONNX Runtime's calibration methods, by elunet's names (export/quantize.py maps them).
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Measured on the fully trained default model (benchmarks/int8_calibration.py, README "int8"):
# every method passed at 64..2048 images; minmax on 512 lost nothing in half a second.
DEFAULT_CALIBRATION_METHOD = "minmax"
DEFAULT_CALIBRATION_IMAGES = 512


@dataclass(frozen=True)
class ExportSettings:
    elu_mode: EluMode = "native"
    dtype: Dtype = "fp32"
    opset: int = DEFAULT_OPSET
    exporter: Exporter = "dynamo"
    # int8 only: how the quantization ranges are found, on how many training images
    calibration_method: str = DEFAULT_CALIBRATION_METHOD
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES

    @property
    def quantized(self) -> bool:
        return self.dtype in QUANTIZED_DTYPES

    @property
    def traced_dtype(self) -> Dtype:
        """What torch traces the network in: the graph's dtype, or float32 for one quantized afterwards."""
        return IO_DTYPE if self.quantized else self.dtype

    def validate(self) -> "ExportSettings":
        for value, allowed, option in (
            (self.elu_mode, ELU_MODES, "--elu"),
            (self.dtype, DTYPES, "--dtype"),
            (self.exporter, EXPORTERS, "--exporter"),
            (self.calibration_method, CALIBRATION_METHODS, "--calibration-method"),
        ):
            if value not in allowed:
                raise ElunetError(f"{option} {value!r} is not supported", hint=f"choose one of: {', '.join(allowed)}")
        if self.calibration_images < 1:
            raise ElunetError(f"--calibration-images must be at least 1, got {self.calibration_images}", hint=f"the default is {DEFAULT_CALIBRATION_IMAGES}")
        lo, hi = OPSET_RANGE[self.exporter]
        if not lo <= self.opset <= hi:
            other = next(e for e in EXPORTERS if e != self.exporter)
            olo, ohi = OPSET_RANGE[other]
            raise ElunetError(
                f"the {self.exporter} exporter writes opsets {lo}..{hi}, but --opset {self.opset} was requested",
                hint=f"use --opset {DEFAULT_OPSET} (the default), or --exporter {other} for opsets {olo}..{ohi}",
            )
        return self
