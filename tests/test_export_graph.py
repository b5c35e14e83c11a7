"""Export, node level: every architecture in both ELU modes, the plugin op and its ONNX function, opset checks.

The big paper nets are exported untrained (their weights do not change what
the exporter must do); parity of a trained model is in test_export_parity.py.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from elunet.card import ModelCard, Preprocessing
from elunet.contracts import INPUT_NAME, OUTPUT_NAME, elu_plugin_contract
from elunet.errors import ElunetError
from elunet.export.elu_plugin_pass import elu_plugin_function, rewrite_elu_as_plugin
from elunet.export.graph_checks import check_elu_nodes, check_opset_supports_types, elu_alphas
from elunet.export.pool_before_elu import pool_before_elu
from elunet.export.quantize import preprocessing_nodes
from elunet.export.settings import ExportSettings
from elunet.export.to_onnx import torch_to_onnx
from elunet.train.models import ARCHITECTURES, build_model

GRAY28 = Preprocessing(channels=1, height=28, width=28, color_mode="L", normalization="meanstd")
RGB32 = Preprocessing(channels=3, height=32, width=32, color_mode="RGB", normalization="gcn+zca")
INPUTS = {"fashion-cnn": GRAY28, "mlp-8x128": GRAY28, "elu-cifar11": RGB32, "elu-cifar18": RGB32}
ARCH_PARAMS = [pytest.param(a, marks=pytest.mark.slow) if a == "elu-cifar18" else a for a in ARCHITECTURES]


def card_for(arch: str, alpha: float = 1.0, activation: str = "elu") -> ModelCard:
    return ModelCard(
        name=f"{arch}-untrained",
        architecture=arch,
        activation=activation,
        alpha=alpha if activation == "elu" else None,
        dataset="fashion-mnist" if INPUTS[arch] is GRAY28 else "cifar10",
        labels=[f"class-{i}" for i in range(10)],
        preprocessing=INPUTS[arch],
    )


@functools.lru_cache(maxsize=None)
def _export(arch: str, alpha: float, settings: ExportSettings) -> tuple[ModelCard, nn.Module, onnx.ModelProto]:
    torch.manual_seed(0)
    card = card_for(arch, alpha)
    model = build_model(card).eval()
    return card, model, torch_to_onnx(model, card, settings)


def exported(arch: str, alpha: float = 0.7, settings: ExportSettings = ExportSettings()):
    """(card, model, native ONNX) of an untrained network, exported once per module; the proto is a copy."""
    card, model, proto = _export(arch, alpha, settings)
    return card, model, copy.deepcopy(proto)


def ort_run(proto: onnx.ModelProto, x: np.ndarray, options: ort.SessionOptions | None = None) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def torch_run(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def assert_close_to_torch(model, proto, card, batch: int) -> None:
    x = np.random.default_rng(batch).random((batch, *card.input_shape), dtype=np.float32)
    ref = torch_run(model, x)
    got = ort_run(proto, x)
    assert got.shape == (batch, card.num_classes)
    # Untrained paper nets give logits in the hundreds: hold them to float32 rounding relative to scale.
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_every_architecture_exports_in_both_elu_modes(arch):
    card, model, native = exported(arch, alpha=0.7)
    alphas = elu_alphas(model)
    assert alphas and all(a == 0.7 for a in alphas)

    check_elu_nodes(native, alphas, "native")
    assert sum(n.op_type == "Elu" for n in native.graph.node) == len(alphas)
    check_opset_supports_types(native)
    assert_close_to_torch(model, native, card, batch=1)

    plugin = copy.deepcopy(native)
    assert rewrite_elu_as_plugin(plugin) == len(alphas)
    check_elu_nodes(plugin, alphas, "plugin")
    check_opset_supports_types(plugin)
    onnx.checker.check_model(plugin, full_check=True)
    assert_close_to_torch(model, plugin, card, batch=3)  # an odd batch through the dynamic axis


# The ELUs each network computes after a max-pool once the export has moved the pools: fashion-cnn pools after
# its 1st, 3rd and 5th convolution, the 11-layer net after the last convolution of each of its first 5 stacks.
POOLED_ELUS = {"fashion-cnn": 3, "mlp-8x128": 0, "elu-cifar11": 5, "elu-cifar18": 5}


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_every_max_pool_after_an_elu_is_moved_before_it(arch):
    _, _, native = exported(arch)
    producer = {out: n for n in native.graph.node for out in n.output}
    pools = [n for n in native.graph.node if n.op_type == "MaxPool"]
    assert len(pools) == POOLED_ELUS[arch]
    assert all(producer[n.input[0]].op_type != "Elu" for n in pools)  # torch_to_onnx ran the pass
    elus_after_pools = [n for n in native.graph.node if n.op_type == "Elu" and producer[n.input[0]].op_type == "MaxPool"]
    assert len(elus_after_pools) == POOLED_ELUS[arch]
    assert pool_before_elu(native) == 0  # nothing left to move


def test_pool_before_elu_keeps_every_value_and_only_moves_a_pool_the_elu_feeds_alone():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 5, 5])
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("pooled", "kept", "also")]
    nodes = [
        helper.make_node("Elu", ["x"], ["e1"], alpha=0.5),
        helper.make_node("MaxPool", ["e1"], ["pooled"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
        helper.make_node("Elu", ["x"], ["e2"], alpha=0.5),  # also read by a second node: must stay where it is
        helper.make_node("MaxPool", ["e2"], ["kept"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Neg", ["e2"], ["also"]),
    ]
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], outs), opset_imports=[helper.make_opsetid("", 17)])
    before = onnx.ModelProto.FromString(proto.SerializeToString())
    assert pool_before_elu(proto) == 1
    onnx.checker.check_model(onnx.shape_inference.infer_shapes(proto, strict_mode=True), full_check=True)
    assert [n.op_type for n in proto.graph.node][:2] == ["MaxPool", "Elu"]  # still sorted: the pool first
    data = np.random.default_rng(0).normal(0, 2, (3, 2, 5, 5)).astype(np.float32)
    data[0, 0, :2, :2] = -np.inf  # a window of -inf: both orders give -alpha
    run = lambda p: ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": data})  # noqa: E731
    for got, expected in zip(run(proto), run(before)):
        np.testing.assert_array_equal(got, expected)


def test_plugin_nodes_carry_exactly_the_contract():
    contract = elu_plugin_contract()
    _, _, proto = exported("mlp-8x128", alpha=0.25)
    rewrite_elu_as_plugin(proto)
    nodes = [n for n in proto.graph.node if n.op_type == contract.op_type]
    assert len(nodes) == 8 and not [n for n in proto.graph.node if n.op_type == "Elu"]
    for node in nodes:
        assert node.domain == contract.onnx_domain
        attrs = {a.name: a for a in node.attribute}
        assert set(attrs) == {*contract.fields, "plugin_version", "plugin_namespace"}
        assert attrs["alpha"].type == onnx.AttributeProto.FLOAT and attrs["alpha"].f == pytest.approx(0.25)
        assert attrs["plugin_version"].type == onnx.AttributeProto.STRING and attrs["plugin_version"].s.decode() == contract.plugin_version
        assert attrs["plugin_namespace"].s.decode() == contract.plugin_namespace and "." not in contract.plugin_namespace
    assert {(o.domain) for o in proto.opset_import} >= {"", contract.onnx_domain}
    (function,) = [f for f in proto.functions if f.name == contract.op_type]
    assert function.domain == contract.onnx_domain


def test_onnx_runtime_really_executes_the_plugin_function(tmp_path):
    """ORT inlines the model-local function: its optimized graph holds the formula's ops, no plugin op."""
    _, model, proto = exported("fashion-cnn")
    rewrite_elu_as_plugin(proto)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(ort_run(proto, x, options), torch_run(model, x), rtol=1e-4, atol=1e-4)
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert elu_plugin_contract().op_type not in ops and "Elu" not in ops
    assert ops.count("Exp") == ops.count("Where") == len(elu_alphas(model))


@pytest.mark.parametrize("dtype, elem", [("fp32", TensorProto.FLOAT), ("fp16", TensorProto.FLOAT16)])
def test_plugin_function_matches_torch_elu_on_special_values(dtype, elem):
    """NaN -> NaN, -inf -> -alpha, +inf -> +inf, exact zero, saturation: what PyTorch's ELU gives."""
    contract = elu_plugin_contract()
    opset = ExportSettings().opset
    node = helper.make_node(contract.op_type, ["x"], ["y"], domain=contract.onnx_domain, alpha=0.5, plugin_version=contract.plugin_version, plugin_namespace=contract.plugin_namespace)
    graph = helper.make_graph([node], "elu", [helper.make_tensor_value_info("x", elem, [9])], [helper.make_tensor_value_info("y", elem, [9])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(contract.onnx_domain, 1)], functions=[elu_plugin_function(opset)])
    onnx.checker.check_model(proto, full_check=True)
    np_type = np.float32 if dtype == "fp32" else np.float16
    x = np.array([np.nan, -np.inf, np.inf, 0.0, -0.0, -30.0, -1e-3, 1e-3, 3.0], dtype=np_type)
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = torch.nn.functional.elu(torch.from_numpy(x.astype(np.float32)), alpha=0.5).numpy().astype(np_type)
    # exp(x) - 1 (the ONNX formula) loses relative accuracy near 0 where torch uses expm1: ~5e-9 absolute at x = -1e-3.
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-3 if dtype == "fp16" else 1e-6, atol=1e-7)
    assert got[1] == np_type(-0.5) and np.isnan(got[0]) and got[2] == np.inf


def _elem_types(proto: onnx.ModelProto, nodes) -> dict[str, int]:
    """The element type of every input of ``nodes``: value or initializer."""
    g = onnx.shape_inference.infer_shapes(proto).graph
    known = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.value_info, *g.output)} | {t.name: t.data_type for t in g.initializer}
    return {name: known[name] for n in nodes for name in n.input if name}


@pytest.mark.parametrize("arch", ["fashion-cnn", "elu-cifar11"])
def test_fp16_graph_is_half_between_the_float32_normalization_and_output(arch):
    _, _, proto = exported(arch, settings=ExportSettings(dtype="fp16"))
    assert [i.type.tensor_type.elem_type for i in (*proto.graph.input, *proto.graph.output)] == [TensorProto.FLOAT] * 2
    normalization = preprocessing_nodes(proto.graph)
    assert normalization[-1].op_type == "Cast" and proto.graph.node[-1].op_type == "Cast"
    # The normalization (for CIFAR: GCN and the 3072x3072 ZCA MatMul) in float32, as int8 graphs keep it.
    assert set(_elem_types(proto, normalization[:-1]).values()) - {TensorProto.INT64} == {TensorProto.FLOAT}  # INT64: shapes
    assert arch != "elu-cifar11" or "MatMul" in [n.op_type for n in normalization]
    body = [n for n in proto.graph.node if n not in normalization][:-1]
    assert set(_elem_types(proto, body).values()) - {TensorProto.INT64} == {TensorProto.FLOAT16}


def test_torchscript_exporter_fallback_keeps_elu_nodes():
    card = card_for("fashion-cnn", alpha=1.5)
    model = build_model(card).eval()
    proto = torch_to_onnx(model, card, ExportSettings(exporter="torchscript", opset=17))
    assert [o.version for o in proto.opset_import if o.domain == ""] == [17]
    check_elu_nodes(proto, elu_alphas(model), "native")
    assert_close_to_torch(model, proto, card, batch=5)


class ExpandedElu(nn.Module):
    """An ELU written out by hand, as a network without nn.ELU might have it."""

    def forward(self, x):
        return torch.where(x > 0, x, torch.exp(x) - 1)


def test_a_decomposed_elu_is_refused():
    card = card_for("mlp-8x128")
    model = build_model(card).eval()
    model.body.hidden1.act = ExpandedElu()
    proto = torch_to_onnx(model, card, ExportSettings())
    with pytest.raises(ElunetError, match="decomposed"):
        check_elu_nodes(proto, elu_alphas(model), "native")


def test_an_elu_count_mismatch_is_refused():
    _, model, proto = exported("mlp-8x128", alpha=0.25)
    assert elu_alphas(model) == [0.25] * 8
    with pytest.raises(ElunetError, match="expected 9 Elu nodes"):
        check_elu_nodes(proto, [0.25] * 9, "native")
    with pytest.raises(ElunetError, match="alphas differ"):
        check_elu_nodes(proto, [0.5] * 8, "native")
    with pytest.raises(ElunetError, match="expected 8 elunet:EluPlugin nodes"):
        check_elu_nodes(proto, [0.25] * 8, "plugin")


def _bf16_elu_model(opset: int) -> onnx.ModelProto:
    node = helper.make_node("Elu", ["x"], ["y"], alpha=1.0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [4])], [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_an_opset_too_old_for_the_dtype_is_refused():
    with pytest.raises(ElunetError, match=r"opset 21: .*op_type:Elu.*unsupported type: tensor\(bfloat16\)") as err:
        check_opset_supports_types(_bf16_elu_model(21))
    assert "newer --opset" in err.value.hint
    check_opset_supports_types(_bf16_elu_model(22))


def test_inputs_bound_to_one_type_must_agree():
    """Add's A and B are both T: float32 + float16 is invalid, though each type alone is allowed."""
    a, b = (helper.make_tensor_value_info(n, t, [4]) for n, t in (("a", TensorProto.FLOAT), ("b", TensorProto.FLOAT16)))
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g", [a, b], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    with pytest.raises(ElunetError, match=r"op_type:Add.*inconsistent type tensor\(float16\)"):
        check_opset_supports_types(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_an_opset_too_old_for_the_plugin_function_is_refused():
    """The function casts its constants with CastLike, which exists from opset 15 on."""
    card = card_for("mlp-8x128")
    proto = torch_to_onnx(build_model(card).eval(), card, ExportSettings(exporter="torchscript", opset=13))
    rewrite_elu_as_plugin(proto)
    with pytest.raises(ElunetError, match="CastLike does not exist at opset 13"):
        check_opset_supports_types(proto)


def test_export_settings_refuse_what_the_exporter_cannot_write():
    with pytest.raises(ElunetError, match="dynamo exporter writes opsets 18..23") as err:
        ExportSettings(opset=13).validate()
    assert "--exporter torchscript" in str(err.value)
    with pytest.raises(ElunetError, match="--dtype 'bf16'"):
        ExportSettings(dtype="bf16").validate()
