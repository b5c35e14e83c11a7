"""`elunet export --dtype int8`: QDQ graph, calibration on real training images, the accuracy gate.

The trained fashion-cnn (fixture ``trained_checkpoint``) is quantized with the
default options and judged on the whole real Fashion-MNIST test split; a
model calibrated on blank images is refused. The graph-level tests quantize
untrained networks on synthetic pixels (named as such): only the structure of
the graph is asserted there, never an accuracy.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from elunet.card import CARD_FILE, AccuracyGate, ModelCard
from elunet.certificate import RunsOn, certificate_problem
from elunet.contracts import INPUT_NAME, OUTPUT_NAME
from elunet.errors import ElunetError
from elunet.export.graph_checks import check_qdq_graph
from elunet.export.parity import criteria, judge_accuracy
from elunet.export.quantize import preprocessing_nodes, quantize_qdq
from elunet.export.settings import ExportSettings
from elunet.export.to_onnx import torch_to_onnx
from elunet.model_config import model_config_pb2, read_config
from elunet.plugins.engine_builder import int8_layers
from elunet.repository import CONFIG_FILE, LABELS_FILE, PARITY_FILE
from elunet.train.data import load_dataset

from test_export_graph import card_for, exported


def elunet(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "elunet", *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def int8_version(trained_checkpoint, tmp_path_factory) -> Path:
    """The trained fashion-cnn exported with `elunet export --dtype int8` (all defaults) into a repository."""
    root = tmp_path_factory.mktemp("int8") / "repository"
    run = elunet("export", trained_checkpoint, "--repository", root, "--dtype", "int8", "--name", "fashion-int8")
    assert run.returncode == 0, run.stderr
    assert "accuracy gate:" in run.stderr and "parity PASSED" in run.stderr
    return root / "fashion-int8" / "1"


def test_int8_export_passes_its_gate_on_the_whole_test_split(int8_version, trained_checkpoint):
    gate = json.loads((int8_version / PARITY_FILE).read_text())["accuracy_gate"]
    test_split = load_dataset("fashion-mnist", "test")
    assert gate["images"] == len(test_split) == 10000
    assert gate["passed"] and gate["accuracy_drop_points"] <= 0.5 and gate["top1_agreement"] >= 0.99
    assert abs(gate["reference_accuracy"] - ModelCard.load(Path(trained_checkpoint) / CARD_FILE).metrics["test_acc"]) < 1e-3, (
        "the reference is the checkpoint's float32 network on the same split training measured"
    )
    card = ModelCard.load(int8_version / CARD_FILE)
    q = card.export.quantization
    assert (card.export.dtype, card.export.io_dtype) == ("int8", "fp32")
    assert (q.calibration_method, q.calibration_images, q.calibration_split) == ("minmax", 512, "train")
    # One set of field names: the card states the gate, the certificate the figures against it.
    assert {k: gate[k] for k in AccuracyGate.model_fields} == q.gate.model_dump() == {"max_accuracy_drop_points": 0.5, "min_top1_agreement": 0.99}
    assert certificate_problem(int8_version / "model.onnx", RunsOn("onnxruntime", "cpu"), labels_file=int8_version.parent / LABELS_FILE) is None
    config = read_config(int8_version.parent / CONFIG_FILE)
    assert [model_config_pb2().DataType.Name(t.data_type) for t in (*config.input, *config.output)] == ["TYPE_FP32", "TYPE_FP32"]


def test_onnx_runtime_computes_the_convolutions_in_int8_and_the_elus_in_float(int8_version, tmp_path):
    model = onnx.load(str(int8_version / "model.onnx"))
    check_qdq_graph(model)
    producers = {out: n for n in model.graph.node for out in n.output}
    elus = [n for n in model.graph.node if n.op_type == "Elu"]
    assert len(elus) == 5 and all(producers[n.input[0]].op_type == "DequantizeLinear" for n in elus)
    assert [n.op_type for n in preprocessing_nodes(model.graph)] == ["Sub", "Div", "QuantizeLinear", "DequantizeLinear"]
    assert producers[OUTPUT_NAME].op_type == "Gemm", "the logits come out of the float Gemm, not a DequantizeLinear"
    io = [(v.name, v.type.tensor_type.elem_type) for v in (*model.graph.input, *model.graph.output)]
    assert io == [(INPUT_NAME, onnx.TensorProto.FLOAT), (OUTPUT_NAME, onnx.TensorProto.FLOAT)]
    # What ONNX Runtime really runs: its optimized graph (extended level, no hardware-specific layout).
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(int8_version / "model.onnx"), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath).graph
    ops = Counter(n.op_type for n in optimized.node)
    assert ops["QLinearConv"] == 5 and ops["Conv"] == 0, ops
    assert ops["Elu"] == 5, f"the ELUs stay float32 ops in ONNX Runtime too: {ops}"
    # The export moved each pool before its ELU (pool_before_elu.py): ONNX Runtime then pools the convolution's int8 output.
    made_by = {out: n.op_type for n in optimized.node for out in n.output}
    assert [made_by[n.input[0]] for n in optimized.node if n.op_type == "MaxPool"] == ["QLinearConv"] * 3


def write_idx(path: Path, data: np.ndarray) -> None:
    """IDX (the MNIST format), gzipped: magic 0x0000 0x08 (unsigned bytes) ndim, the sizes big-endian, the data."""
    raw = bytes([0, 0, 8, data.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in data.shape) + data.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(raw)


def blank_calibration_data(folder: Path, blank: int = 8, test: int = 2000) -> Path:
    """Fashion-MNIST with a training split of ``blank`` blank images and the first ``test`` real test images as its test split."""
    real = load_dataset("fashion-mnist", "test")
    folder.mkdir(parents=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((blank, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(blank) % 10)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", real.images[:test, 0].numpy())
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", real.targets[:test].numpy())
    return folder


def test_a_model_calibrated_on_blank_images_is_refused_with_the_figures(trained_checkpoint, tmp_path):
    data = blank_calibration_data(tmp_path / "blank")
    repo = tmp_path / "repository"
    run = elunet("export", trained_checkpoint, "--repository", repo, "--dtype", "int8", "--data-dir", data, "--calibration-images", 8)
    assert run.returncode == 1, run.stderr
    assert "calibration: 8 fashion-mnist train images" in run.stderr
    assert "failed its accuracy gate, so nothing was written" in run.stderr
    assert "on 2000 test images" in run.stderr and "points lost, at most 0.5 allowed" in run.stderr
    for fix in ("--calibration-images", "--calibration-method", "--dtype fp32", "--max-accuracy-drop"):
        assert fix in run.stderr
    assert not repo.exists() or not any(repo.rglob("*.onnx"))


def test_the_gate_is_settable_and_refuses_what_does_not_apply(trained_checkpoint, tmp_path):
    tolerance, gate = criteria("int8", min_top1=0.995, max_accuracy_drop=0.2)  # tighter than the defaults
    assert gate == AccuracyGate(max_accuracy_drop_points=0.2, min_top1_agreement=0.995) and not tolerance.loosened
    with pytest.raises(ElunetError, match=r"--min-top1 0.95 \(default 0.99\) is looser"):
        criteria("int8", min_top1=0.95)
    assert criteria("int8", max_accuracy_drop=2, loosen=True)[0].loosened
    with pytest.raises(ElunetError, match="judged by accuracy"):
        criteria("int8", atol=1e-3)
    with pytest.raises(ElunetError, match="judges int8 graphs"):
        criteria("fp16", max_accuracy_drop=1)
    run = elunet("export", trained_checkpoint, "--out", tmp_path / "m.onnx", "--calibration-method", "entropy")
    assert run.returncode == 2 and "calibrate int8 exports; this one is --dtype fp32" in run.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_the_gate_judges_accuracy_drop_and_agreement():
    """Synthetic logits: 1000 images, the reference right on all."""
    targets = np.arange(1000) % 10
    reference = np.eye(10, dtype=np.float32)[targets]
    gate = AccuracyGate(max_accuracy_drop_points=0.5, min_top1_agreement=0.99)
    for wrong, passed in ((5, True), (6, False)):  # 5 of 1000 = 0.5 points exactly
        actual = reference.copy()
        actual[:wrong] = np.roll(actual[:wrong], 1, axis=1)
        verdict = judge_accuracy(gate, targets, reference, actual)
        assert verdict["passed"] is passed and verdict["accuracy_drop_points"] == pytest.approx(wrong / 10)
    # Accuracy kept, classes swapped: the agreement alone fails it.
    swapped = judge_accuracy(AccuracyGate(max_accuracy_drop_points=100, min_top1_agreement=0.99), targets, reference, np.roll(reference, 1, axis=1))
    assert not swapped["passed"] and swapped["top1_agreement"] == 0.0


def synthetic_pixels(card, n: int = 64) -> np.ndarray:
    return np.random.default_rng(0).random((n, *card.input_shape), dtype=np.float32)


def test_gcn_zca_preprocessing_of_the_paper_net_stays_float():
    """elu-cifar11, untrained, calibrated on synthetic pixels: the graph structure only."""
    card, model, proto = exported("elu-cifar11", 1.0, ExportSettings(dtype="int8"))
    quantized = quantize_qdq(proto, synthetic_pixels(card, 32), "minmax")
    check_qdq_graph(quantized)
    pre = [n.op_type for n in preprocessing_nodes(quantized.graph)]
    assert "MatMul" in pre and pre[-2:] == ["QuantizeLinear", "DequantizeLinear"] and pre.count("QuantizeLinear") == 1
    assert Counter(n.op_type for n in quantized.graph.node)["Elu"] == 10


def test_int8_weights_take_7_bits_and_a_graph_with_8_bit_weights_is_refused():
    """Without VNNI, x86 CPUs add two int8 products in 16 bits and saturate: 7-bit weights never do (synthetic pixels)."""
    card, model, proto = exported("fashion-cnn", 1.0, ExportSettings(dtype="int8"))
    quantized = quantize_qdq(proto, synthetic_pixels(card), "minmax")
    check_qdq_graph(quantized)
    weights = [t for t in quantized.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1]
    assert len(weights) == 6 and max(int(np.abs(onnx.numpy_helper.to_array(t)).max()) for t in weights) == 64
    first = weights[0]
    first.CopyFrom(onnx.numpy_helper.from_array((onnx.numpy_helper.to_array(first).astype(np.int16) * 2).clip(-127, 127).astype(np.int8), first.name))
    with pytest.raises(ElunetError, match="beyond ±64 .7 bits.: CPUs without VNNI would saturate"):
        check_qdq_graph(quantized)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_every_calibration_method_gives_a_tensorrt_ready_graph(method, capfd):
    card, model, proto = exported("fashion-cnn", 1.0, ExportSettings(dtype="int8"))
    check_qdq_graph(quantize_qdq(proto, synthetic_pixels(card), method))
    assert capfd.readouterr().out == "", "`elunet export` prints only the model's path on stdout"


def test_plugin_elus_in_an_int8_graph_run_in_onnx_runtime():
    from elunet.export.elu_plugin_pass import rewrite_elu_as_plugin

    card, model, proto = exported("fashion-cnn", 1.0, ExportSettings(dtype="int8"))
    native = quantize_qdq(proto, synthetic_pixels(card), "minmax")
    plugin = onnx.ModelProto.FromString(native.SerializeToString())
    rewrite_elu_as_plugin(plugin)
    check_qdq_graph(plugin)
    x = synthetic_pixels(card, 8)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run([OUTPUT_NAME], {INPUT_NAME: x})[0]  # noqa: E731
    assert Counter(n.op_type for n in plugin.graph.node)["Elu"] == 0
    # exp(x) - 1 in the plugin's function and ONNX Runtime's Elu kernel differ in the last float bits,
    # which may move a value across one int8 step: equal up to a few steps of the logits' scale.
    native_logits = run(native)
    np.testing.assert_allclose(run(plugin), native_logits, atol=0.05 * float(np.abs(native_logits).max()))


def test_a_graph_without_weighted_layers_cannot_be_quantized():
    card = card_for("fashion-cnn")
    proto = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Flatten", [INPUT_NAME], [OUTPUT_NAME])],
            "flat",
            [onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, ["batch", 1, 28, 28])],
            [onnx.helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, ["batch", 784])],
        )
    )
    with pytest.raises(ElunetError, match="no Conv or Gemm layer"):
        quantize_qdq(proto, synthetic_pixels(card, 4), "minmax")


def test_engine_int8_layers_are_read_from_the_inspector_json():
    """The engine inspector's layer JSON as TensorRT's documentation shows it (no TensorRT here)."""
    layers = [
        {"Name": "conv1", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "x", "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
         "Outputs": [{"Name": "y", "Format/Datatype": "Row major linear FP32"}]},
        {"Name": "elu", "LayerType": "PointWiseV2", "Inputs": [{"Name": "y", "Format/Datatype": "Row major linear FP32"}], "Outputs": []},
    ]
    assert [layer["Name"] for layer in int8_layers(layers)] == ["conv1"]
