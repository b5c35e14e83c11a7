"""int8: a float32 graph -> a QDQ graph, by ONNX Runtime's static quantization, calibrated on real training images.

One QDQ graph serves ONNX Runtime (its CPU provider fuses DequantizeLinear ->
Conv -> QuantizeLinear into QLinearConv) and TensorRT's explicit quantization
(`elunet build-engine`), so it follows TensorRT's rules:

- int8 weights and activations, both symmetric: TensorRT's Q/DQ take zero
  point 0 only;
- weights per output channel (Conv axis 0, Gemm's transposed weight axis 0);
- biases left float32: TensorRT quantizes them itself and has no int32
  DequantizeLinear; ONNX Runtime quantizes them when it fuses QLinearConv;
- a dedicated Q/DQ pair per consumer: TensorRT cannot fuse a shared one;
- weights in 7 bits (-64..64, ``reduce_range``): x86 CPUs without VNNI (AVX2,
  AVX-512 before Cascade Lake) multiply int8 with VPMADDUBSW, which adds two
  products in 16 bits and saturates when both are large; with 7-bit weights
  no sum can. With 8-bit weights the same trained fashion-cnn failed its gate
  on an AMD EPYC with AVX2 (top-1 agreement 98.07 %, below 99 %) and passed
  on a CPU with VNNI; with 7 bits it passes on both (99.62 % on the EPYC), so
  a model certified on one CPU keeps its accuracy on the others.

What stays float32, on purpose:

- the input, the preprocessing and the output: every node up to the body's
  first weighted layer (the normalization: mean/std, or GCN + ZCA with its
  MatMul) is excluded, and the op producing the logits keeps its output
  float (int8 logits would tie close classes);
- the ELU layers: ONNX Runtime's QDQ quantizer has no int8 Elu (Elu is not in
  its QDQ registry), so each Elu computes in float32 on the dequantized
  output of its convolution or of the max-pool moved before it
  (pool_before_elu.py; that pool runs on int8), and the next layer quantizes
  its input again. graph_checks.check_qdq_graph holds every export to exactly
  this.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import onnx

from elunet.card import AccuracyGate, QuantizationInfo
from elunet.contracts import INPUT_NAME, OUTPUT_NAME
from elunet.errors import ElunetError
from elunet.export.settings import ExportSettings
from elunet.export.to_onnx import quiet

# The body's weighted layers: the first one ends the preprocessing.
WEIGHTED_OPS = ("Conv", "Gemm")
# The largest int8 weight with ``reduce_range`` (7 bits): no VPMADDUBSW pair sum can saturate (255 * 64 * 2 < 2**15).
WEIGHT_LIMIT = 64
CALIBRATION_SPLIT = "train"
CALIBRATION_SEED = 0
CALIBRATION_BATCH = 64
WEIGHTS = "int8 in 7 bits (-64..64), symmetric, per output channel"
ACTIVATIONS = "int8, symmetric, per tensor"
ELU_HANDLING = "float32 between DequantizeLinear and QuantizeLinear (ONNX Runtime's QDQ quantizer has no int8 Elu)"


def quantization_info(settings: ExportSettings, calibration_images: int, gate: AccuracyGate) -> QuantizationInfo:
    """The card's record of how the graph is quantized; ``calibration_images``: how many were really used."""
    import onnxruntime

    return QuantizationInfo(
        tool=f"onnxruntime.quantization {onnxruntime.__version__} quantize_static",
        weights=WEIGHTS,
        activations=ACTIVATIONS,
        elu=ELU_HANDLING,
        calibration_method=settings.calibration_method,
        calibration_images=calibration_images,
        calibration_split=CALIBRATION_SPLIT,
        calibration_seed=CALIBRATION_SEED,
        gate=gate,
    )


def preprocessing_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes the body's first weighted layer's data input depends on: the normalization."""
    first = next((n for n in graph.node if n.op_type in WEIGHTED_OPS), None)  # ONNX graphs are topologically sorted
    if first is None:
        raise ElunetError(f"the graph has no {' or '.join(WEIGHTED_OPS)} layer to quantize", hint="export this model in fp32 or fp16")
    producers = {out: n for n in graph.node for out in n.output}
    found, pending = {}, [first.input[0]]
    while pending:
        node = producers.get(pending.pop())
        if node is not None and id(node) not in found:
            found[id(node)] = node
            pending.extend(node.input)
    return [n for n in graph.node if id(n) in found]


def _named(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The quantizer addresses nodes by name: give unnamed ones (the TorchScript exporter leaves some) one."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    taken = {n.name for n in proto.graph.node}
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
            while node.name in taken:
                node.name += "_"
            taken.add(node.name)
    return proto


class _Batches:
    """ONNX Runtime's CalibrationDataReader protocol over an array of pixels."""

    def __init__(self, pixels: np.ndarray):
        self._batches = iter([{INPUT_NAME: pixels[i : i + CALIBRATION_BATCH]} for i in range(0, len(pixels), CALIBRATION_BATCH)])

    def get_next(self):
        return next(self._batches, None)


def quantize_qdq(proto: onnx.ModelProto, pixels: np.ndarray, method: str) -> onnx.ModelProto:
    """The float32 graph ``proto`` quantized to int8 QDQ, ranges calibrated by ``method`` on ``pixels``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    proto = _named(proto)
    logits_op = next(n.op_type for n in proto.graph.node if OUTPUT_NAME in n.output)
    # The histogram calibrators print their progress on stdout, where `elunet export` writes only the model's path.
    with tempfile.TemporaryDirectory(prefix="elunet-int8-") as tmp, quiet(("",)), contextlib.redirect_stdout(io.StringIO()):
        out = Path(tmp) / "int8.onnx"
        quantize_static(
            proto,
            out,
            _Batches(pixels),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            nodes_to_exclude=[n.name for n in preprocessing_nodes(proto.graph)],
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
                "DedicatedQDQPair": True,
                "OpTypesToExcludeOutputQuantization": [logits_op],
            },
        )
        quantized = onnx.load(str(out))
    # The quantizer drops what it does not know; keep the graph's description.
    quantized.doc_string = proto.doc_string
    return quantized
