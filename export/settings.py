"""What an export is asked to produce, and the choices the CLI offers.

Kept free of torch and onnx so that `elunet --help` can show the choices
without importing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from elunet.errors import ElunetError

ELU_MODES = ("native", "plugin")
DTYPES = ("fp32", "fp16")
EXPORTERS = ("dynamo", "torchscript")
EluMode = Literal[ELU_MODES]
Dtype = Literal[DTYPES]
Exporter = Literal[EXPORTERS]

# Whatever the graph computes in, its input and output tensors are float32:
# an fp16 graph casts the pixels to half right after the input and the logits
# back right before the output. Clients, the server and Triton's config see
# one interface for both dtypes, and TensorRT's strongly typed networks accept
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


@dataclass(frozen=True)
class ExportSettings:
    elu_mode: EluMode = "native"
    dtype: Dtype = "fp32"
    opset: int = DEFAULT_OPSET
    exporter: Exporter = "dynamo"

    def validate(self) -> "ExportSettings":
        for value, allowed, option in (
            (self.elu_mode, ELU_MODES, "--elu"),
            (self.dtype, DTYPES, "--dtype"),
            (self.exporter, EXPORTERS, "--exporter"),
        ):
            if value not in allowed:
                raise ElunetError(f"{option} {value!r} is not supported", hint=f"choose one of: {', '.join(allowed)}")
        lo, hi = OPSET_RANGE[self.exporter]
        if not lo <= self.opset <= hi:
            other = next(e for e in EXPORTERS if e != self.exporter)
            olo, ohi = OPSET_RANGE[other]
            raise ElunetError(
                f"the {self.exporter} exporter writes opsets {lo}..{hi}, but --opset {self.opset} was requested",
                hint=f"use --opset {DEFAULT_OPSET} (the default), or --exporter {other} for opsets {olo}..{ohi}",
            )
        return self
