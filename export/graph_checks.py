"""Node-level checks on an exported graph, run before anything is written.

- Every ``nn.ELU`` module became exactly one ONNX ``Elu`` node (native) or one
  plugin node (plugin) with the same alpha, and none was decomposed: an
  ELU written out as ops always needs an ``Exp``, and nothing else in these
  networks does, so an ``Exp`` in the main graph means a decomposition.
  (``Sub`` is no such sign: the normalization subtracts its mean.)
- Every operator exists at the model's opset and accepts the element types it
  is fed there (e.g. ``Elu`` takes bfloat16 only from opset 22 on): ONNX's own
  type-checking shape inference, plus the functions' operators it skips.
- An int8 (QDQ) graph is quantized as export/quantize.py says: symmetric
  int8 Q/DQ, per-channel int8 weights, float biases, the preprocessing and
  the logits float32, every ELU in float32 on a dequantized input.
- ``onnx.checker`` (full check) and strict shape inference pass, and the
  graph has elunet's interface: ``INPUT_NAME`` [batch, C, H, W] and
  ``OUTPUT_NAME`` [batch, classes], float32, batch dynamic.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx.defs
from torch import nn

from elunet.card import ModelCard
from elunet.contracts import INPUT_NAME, OUTPUT_NAME, elu_plugin_contract
from elunet.errors import ElunetError
from elunet.export.elu_plugin_pass import elu_alpha
from elunet.export.settings import DEFAULT_OPSET, IO_DTYPE, OPSET_RANGE
from elunet.export.to_onnx import ONNX_DTYPES, opset_of

DECOMPOSITION_SIGNS = ("Exp", "Expm1")


def elu_alphas(model: nn.Module) -> list[float]:
    """The alpha of every ``nn.ELU`` module, in module order."""
    return [m.alpha for m in model.modules() if isinstance(m, nn.ELU)]


def _f32(values) -> Counter:
    # ONNX stores alpha as float32; compare what the graph can hold.
    return Counter(float(np.float32(v)) for v in values)


def check_elu_nodes(proto: onnx.ModelProto, alphas: list[float], elu_mode: str) -> None:
    """Raise unless the graph holds one ELU node per ELU module, in the form ``elu_mode`` asks for."""
    contract = elu_plugin_contract()
    nodes = proto.graph.node
    native = [n for n in nodes if n.op_type == "Elu" and n.domain in ("", "ai.onnx")]
    plugin = [n for n in nodes if n.op_type == contract.op_type and n.domain == contract.onnx_domain]
    decomposed = sorted({n.op_type for n in nodes if n.op_type in DECOMPOSITION_SIGNS})
    if decomposed:
        raise ElunetError(
            f"the exported graph contains {', '.join(decomposed)} nodes: an ELU was decomposed into elementary ops",
            hint="export with the default --exporter dynamo, which keeps aten.elu as one ONNX Elu node",
        )
    wanted, other = (native, plugin) if elu_mode == "native" else (plugin, native)
    wanted_name = "Elu" if elu_mode == "native" else f"{contract.onnx_domain}:{contract.op_type}"
    if other or len(wanted) != len(alphas):
        raise ElunetError(
            f"expected {len(alphas)} {wanted_name} nodes (one per nn.ELU module) and no others, "
            f"found {len(native)} Elu and {len(plugin)} {contract.op_type} nodes",
            hint="the network holds an ELU the exporter did not translate one-to-one; report this with the architecture",
        )
    found = _f32(elu_alpha(n) for n in wanted)
    if found != _f32(alphas):
        raise ElunetError(
            f"ELU alphas differ between the graph {sorted(found.elements())} and the network {sorted(_f32(alphas).elements())}",
            hint="the exporter lost an ELU's alpha; report this with the architecture",
        )


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def check_qdq_graph(proto: onnx.ModelProto) -> None:
    """Raise unless the int8 graph is quantized exactly as export/quantize.py describes."""
    from elunet.export.quantize import WEIGHT_LIMIT, WEIGHTED_OPS, preprocessing_nodes

    g = proto.graph
    contract = elu_plugin_contract()
    init = {t.name: t for t in g.initializer}
    producers = {out: n for n in g.node for out in n.output}

    def fail(what: str):
        raise ElunetError(f"the int8 graph {what}", hint="the quantizer's output changed; report this with the onnxruntime version")

    if not any(n.op_type == "QuantizeLinear" for n in g.node):
        fail("has no QuantizeLinear node: nothing was quantized")
    for node in g.node:
        if node.op_type not in QDQ_OPS:
            continue
        zero_point = init.get(node.input[2]) if len(node.input) > 2 else None
        if zero_point is None or zero_point.data_type != onnx.TensorProto.INT8 or onnx.numpy_helper.to_array(zero_point).any():
            fail(f"has {node.op_type} {node.name!r} without an int8 zero point of 0 (TensorRT needs symmetric int8)")
    if any(t.data_type == onnx.TensorProto.INT32 for t in g.initializer):
        fail("holds int32 initializers: quantized biases, which TensorRT cannot take")
    for node in g.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        data, weight = (producers.get(name) for name in node.input[:2])
        if data is None or data.op_type != "DequantizeLinear" or weight is None or weight.op_type != "DequantizeLinear":
            fail(f"computes {node.op_type} {node.name!r} on float inputs: its input and weight must be dequantized int8")
        weights, scale = init.get(weight.input[0]), init.get(weight.input[1])
        axis = next((a.i for a in weight.attribute if a.name == "axis"), 1)
        if weights is None or weights.data_type != onnx.TensorProto.INT8 or scale is None or axis != 0 or list(scale.dims) != [weights.dims[0]]:
            fail(f"does not hold the weights of {node.op_type} {node.name!r} as int8 per output channel")
        if np.abs(onnx.numpy_helper.to_array(weights).astype(np.int16)).max() > WEIGHT_LIMIT:
            fail(f"holds weights of {node.op_type} {node.name!r} beyond ±{WEIGHT_LIMIT} (7 bits): CPUs without VNNI would saturate them")
    pre = preprocessing_nodes(g)
    if [n.op_type for n in pre if n.op_type in QDQ_OPS] != list(QDQ_OPS):
        fail("quantizes inside the preprocessing: only the first weighted layer's input may be quantized")
    elus = [n for n in g.node if n.op_type == "Elu" or (n.op_type, n.domain) == (contract.op_type, contract.onnx_domain)]
    for node in elus:
        source = producers.get(node.input[0])
        if source is None or source.op_type != "DequantizeLinear":
            fail(f"feeds {node.op_type} {node.name!r} from {source.op_type if source else 'the graph input'}, not from a DequantizeLinear")
    if producers[OUTPUT_NAME].op_type == "DequantizeLinear":
        fail(f"quantizes its output {OUTPUT_NAME!r}: the logits must stay float32")


def check_opset_supports_types(proto: onnx.ModelProto) -> None:
    """Raise when an operator does not exist at the model's opset, or does not accept the types it is fed there.

    ONNX's strict, type-checking shape inference judges the main graph (every type constraint,
    including that inputs bound to one type parameter agree). It does not look inside model-local
    functions, such as the ELU plugin op's, so their operators' existence at the opset is checked
    here; the types they run at are those of the main-graph node that calls them.
    """
    opset = opset_of(proto)
    try:
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        raise ElunetError(
            f"the graph is not valid ONNX at opset {opset}: {exc}",
            hint=f"an operator may accept this dtype at a newer --opset (the dynamo exporter writes up to {OPSET_RANGE['dynamo'][1]}; "
            f"the default is {DEFAULT_OPSET})",
        ) from None
    for function in proto.functions:
        for node in function.node:
            if node.domain in ("", "ai.onnx") and not _exists(node.op_type, opset):
                raise ElunetError(
                    f"operator {node.op_type} does not exist at opset {opset} (in the function {function.domain}:{function.name})",
                    hint=f"export with a newer --opset (the default is {DEFAULT_OPSET})",
                )


def _exists(op_type: str, opset: int) -> bool:
    try:
        onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return False
    return True


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def check_onnx_file(path: Path, card: ModelCard) -> None:
    """onnx.checker (full check), strict shape inference, and elunet's graph interface, on a written file."""
    path = Path(path)
    inferred = path.with_name(f".{path.name}.inferred")
    try:
        onnx.checker.check_model(str(path), full_check=True)
        # The path variant works for any model size; it writes the inferred model beside the file.
        onnx.shape_inference.infer_shapes_path(str(path), str(inferred), check_type=True, strict_mode=True)
        proto = onnx.load(str(inferred), load_external_data=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ElunetError(f"{path} fails the ONNX checks: {exc}", hint="the export is broken; report this with the architecture") from None
    finally:
        inferred.unlink(missing_ok=True)
    io_type = ONNX_DTYPES[IO_DTYPE]
    expected = {
        INPUT_NAME: [*card.input_shape],
        OUTPUT_NAME: [card.num_classes],
    }
    for values, name, kind in ((proto.graph.input, INPUT_NAME, "input"), (proto.graph.output, OUTPUT_NAME, "output")):
        names = [v.name for v in values]
        if names != [name]:
            raise ElunetError(f"{path}: graph {kind}s are {names}, expected [{name!r}]", hint="re-export with `elunet export`")
        value = values[0]
        dims = _dims(value)
        if value.type.tensor_type.elem_type != io_type or len(dims) != 1 + len(expected[name]) or dims[1:] != expected[name] or not isinstance(dims[0], str):
            raise ElunetError(
                f"{path}: {kind} {name!r} is {onnx.helper.tensor_dtype_to_string(value.type.tensor_type.elem_type)} {dims}, "
                f"expected {onnx.helper.tensor_dtype_to_string(io_type)} [batch, {', '.join(map(str, expected[name]))}] with a dynamic batch",
                hint="the checkpoint's card and network disagree, or the graph is not an elunet export",
            )
