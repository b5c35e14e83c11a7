"""PyTorch network -> ONNX graph with elunet's interface.

Every exported graph has one input ``INPUT_NAME`` [batch, C, H, W] of pixels
in [0, 1] and one output ``OUTPUT_NAME`` [batch, classes] of logits, both
``IO_DTYPE`` (float32) whatever the graph computes in (see settings.py).

The normalization module is the network's first module, so it is traced into
the graph like any other layer; it computes in float32 whatever the graph's dtype. Each max-pool that follows an ELU is then
moved before it (pool_before_elu.py): the same values, fewer ELUs computed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings

import onnx
import torch
from torch import nn

from elunet.card import ModelCard
from elunet.contracts import INPUT_NAME, OUTPUT_NAME
from elunet.errors import ElunetError
from elunet.export.pool_before_elu import pool_before_elu
from elunet.export.settings import IO_DTYPE, ExportSettings

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
ONNX_DTYPES = {"fp32": onnx.TensorProto.FLOAT, "fp16": onnx.TensorProto.FLOAT16}
BATCH_DIM = "batch"
EXAMPLE_BATCH = 2  # torch.export specialises sizes 0 and 1, so trace with 2


class _BodyIn(nn.Module):
    """A Network whose normalization runs in ``io`` (float32) and whose body runs in ``compute``
    (two Cast nodes in the graph: after the normalization, before the output).

    The normalization stays float32 as in int8 graphs: CIFAR's ZCA whitening is a 3072 x 3072
    MatMul whose sums of 3072 products half precision would round, on every input, before the
    first layer, and a mean/std step costs nothing in float32 either.
    """

    def __init__(self, network: nn.Module, compute: torch.dtype, io: torch.dtype):
        super().__init__()
        self.normalize, self.body = network.normalize.to(io), network.body.to(compute)
        self.compute, self.io = compute, io

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x).to(self.compute)).to(self.io)


def torch_to_onnx(model: nn.Module, card: ModelCard, settings: ExportSettings) -> onnx.ModelProto:
    """Trace ``model`` (eval, CPU, float32) into an ONNX graph; ``model`` is left unchanged."""
    settings.validate()
    model = copy.deepcopy(model).eval().to("cpu", TORCH_DTYPES[IO_DTYPE])
    if settings.traced_dtype != IO_DTYPE:
        model = _BodyIn(model, TORCH_DTYPES[settings.traced_dtype], TORCH_DTYPES[IO_DTYPE]).eval()
    example = torch.rand(EXAMPLE_BATCH, *card.input_shape, dtype=TORCH_DTYPES[IO_DTYPE])
    with quiet(), torch.no_grad():
        if settings.exporter == "dynamo":
            proto = _export_dynamo(model, example, settings.opset)
        else:
            proto = _export_torchscript(model, example, settings.opset)
    got = opset_of(proto)
    if got != settings.opset:
        raise ElunetError(
            f"the {settings.exporter} exporter produced opset {got}, not the requested {settings.opset}",
            hint=f"its version conversion failed for this model; use --opset {got}",
        )
    pool_before_elu(proto)
    proto.doc_string = f"{card.name} v{card.version}: {card.architecture} ({card.activation}), exported by elunet"
    return proto


def _export_dynamo(model: nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: torch.export.Dim(BATCH_DIM)},),
        opset_version=opset,
        optimize=True,
        verbose=False,
    )
    return program.model_proto


def _export_torchscript(model: nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (example,),
        buffer,
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
        opset_version=opset,
        do_constant_folding=True,
    )
    return onnx.load_from_string(buffer.getvalue())


def opset_of(proto: onnx.ModelProto) -> int:
    """The default-domain opset a model imports."""
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ElunetError("the ONNX model imports no default-domain opset", hint="re-export it with `elunet export`")


EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo")


@contextlib.contextmanager
def quiet(logger_names: tuple[str, ...] = EXPORTER_LOGGERS):
    """The exporters (and ONNX Runtime's quantizer, on the root logger) log per-op chatter and
    deprecation notes; elunet reports its own checks instead."""
    loggers = [logging.getLogger(name) for name in logger_names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
