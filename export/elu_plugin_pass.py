"""Graph pass: every ONNX ``Elu`` becomes the ELU TensorRT plugin op.

The plugin node carries exactly what the plugin's creator in ``plugins/elu``
registers, both read from ``elunet/elu_plugin.json`` via
:func:`elunet.contracts.elu_plugin_contract`: op_type and domain, the plugin
fields (``alpha``), and ``plugin_version`` / ``plugin_namespace``, which
TensorRT's ONNX parser reads to pick the registered plugin.

So that every other runtime (ONNX Runtime, Triton's onnxruntime backend,
onnx.reference) can run the same file, the model also carries a model-local
ONNX function that defines the op by its formula::

    EluPlugin(X) = X                      where X > 0
                   alpha * (exp(X) - 1)   elsewhere

``Where`` (not ``Max``/``Min``) keeps the plugin's special values: NaN -> NaN,
-inf -> -alpha, +inf -> +inf (an ``exp`` overflow in the branch not taken is
discarded). The constants are cast to X's type, so one function serves fp32
and fp16 graphs.
"""

from __future__ import annotations

import onnx
from onnx import helper

from elunet.contracts import elu_plugin_contract
from elunet.errors import ElunetError
from elunet.export.to_onnx import opset_of

# The version of the elunet ONNX domain this function definition belongs to.
# TensorRT matches plugins by op_type, plugin_version and plugin_namespace, not by it.
DOMAIN_VERSION = 1
# How each plugin field the contract names is read off an ONNX Elu node,
# with the attribute type the contract's field type maps to.
_FIELD_TYPES = {"float32": onnx.AttributeProto.FLOAT}


def elu_alpha(node: onnx.NodeProto) -> float:
    for attr in node.attribute:
        if attr.name == "alpha":
            return attr.f
    return 1.0  # the ONNX default for Elu


_FIELDS_FROM_ELU = {"alpha": elu_alpha}


def _plugin_attributes(node: onnx.NodeProto) -> list[onnx.AttributeProto]:
    contract = elu_plugin_contract()
    attrs = []
    for field, field_type in contract.fields.items():
        if field not in _FIELDS_FROM_ELU or _FIELD_TYPES.get(field_type) != onnx.AttributeProto.FLOAT:
            raise ElunetError(
                f"the ELU plugin contract names field {field!r} of type {field_type!r}, which the exporter cannot fill",
                hint="elunet/elu_plugin.json and export/elu_plugin_pass.py must change together",
            )
        attrs.append(helper.make_attribute(field, _FIELDS_FROM_ELU[field](node)))
    attrs.append(helper.make_attribute("plugin_version", contract.plugin_version))
    attrs.append(helper.make_attribute("plugin_namespace", contract.plugin_namespace))
    return attrs


def elu_plugin_function(opset: int) -> onnx.FunctionProto:
    """The model-local function that defines the plugin op for runtimes without the plugin."""
    contract = elu_plugin_contract()
    alpha = onnx.NodeProto(op_type="Constant", output=["alpha_f32"])
    # value_float taken from the calling node's alpha attribute
    alpha.attribute.append(onnx.AttributeProto(name="value_float", ref_attr_name="alpha", type=onnx.AttributeProto.FLOAT))
    nodes = [
        alpha,
        helper.make_node("CastLike", ["alpha_f32", "X"], ["alpha"]),
        helper.make_node("Constant", [], ["zero_f32"], value_float=0.0),
        helper.make_node("CastLike", ["zero_f32", "X"], ["zero"]),
        helper.make_node("Constant", [], ["one_f32"], value_float=1.0),
        helper.make_node("CastLike", ["one_f32", "X"], ["one"]),
        helper.make_node("Greater", ["X", "zero"], ["positive"]),
        helper.make_node("Exp", ["X"], ["exp"]),
        helper.make_node("Sub", ["exp", "one"], ["expm1"]),
        helper.make_node("Mul", ["alpha", "expm1"], ["negative"]),
        helper.make_node("Where", ["positive", "X", "negative"], ["Y"]),
    ]
    return helper.make_function(
        contract.onnx_domain,
        contract.op_type,
        inputs=["X"],
        outputs=["Y"],
        nodes=nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=[*contract.fields, "plugin_version", "plugin_namespace"],
        doc_string="ELU: X where X > 0, alpha * (exp(X) - 1) elsewhere. TensorRT runs the registered plugin instead.",
    )


def rewrite_elu_as_plugin(proto: onnx.ModelProto) -> int:
    """Replace every default-domain Elu node in place; returns how many were replaced."""
    contract = elu_plugin_contract()
    replaced = 0
    for i, node in enumerate(proto.graph.node):
        if node.op_type != "Elu" or node.domain not in ("", "ai.onnx"):
            continue
        plugin = helper.make_node(
            contract.op_type,
            list(node.input),
            list(node.output),
            name=node.name or f"elu_{i}",
            domain=contract.onnx_domain,
        )
        plugin.attribute.extend(_plugin_attributes(node))
        proto.graph.node[i].CopyFrom(plugin)
        replaced += 1
    if replaced:
        if not any(o.domain == contract.onnx_domain for o in proto.opset_import):
            proto.opset_import.append(helper.make_opsetid(contract.onnx_domain, DOMAIN_VERSION))
        kept = [f for f in proto.functions if not (f.domain == contract.onnx_domain and f.name == contract.op_type)]
        del proto.functions[:]
        proto.functions.extend([*kept, elu_plugin_function(opset_of(proto))])
    return replaced
