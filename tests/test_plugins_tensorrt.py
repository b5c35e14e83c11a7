"""TensorRT end to end: plugin library, engine build with the inspector check, runner parity.

Collected everywhere; skips with the reason when TensorRT, the plugin library
or a GPU is missing (TensorRT is not installable on the development machines;
these run in NVIDIA's TensorRT container on a GPU).
"""

from __future__ import annotations

import numpy as np
import pytest

from elunet.contracts import INPUT_NAME, OUTPUT_NAME, elu_plugin_contract
from elunet.errors import ElunetError

pytestmark = pytest.mark.tensorrt


@pytest.fixture(scope="module")
def trt():
    from elunet.plugins.tensorrt_import import import_tensorrt

    try:
        trt = import_tensorrt()
        if trt.Builder(trt.Logger(trt.Logger.ERROR)) is None:
            pytest.skip("TensorRT is installed but its builder failed to start (no GPU?)")
    except ElunetError as exc:
        pytest.skip(f"TensorRT is not available: {exc.message}")
    except Exception as exc:  # e.g. no CUDA device
        pytest.skip(f"TensorRT is installed but its builder failed: {exc}")
    return trt


@pytest.fixture(scope="module")
def plugin_library(trt):
    from elunet.plugins.library import load_plugin_library

    try:
        load_plugin_library()
    except ElunetError as exc:
        pytest.skip(f"plugin library not built: {exc.message}")


def elu_plugin_onnx(path, alpha: float, dtype=np.float32, plugin: bool = True):
    """A synthetic one-node ONNX: input [batch, 1, 4, 4] -> EluPlugin (or ONNX's Elu) -> Flatten -> logits [batch, 16]."""
    import onnx
    from onnx import TensorProto, helper

    contract = elu_plugin_contract()
    onnx_type = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    if plugin:
        elu = helper.make_node(contract.op_type, [INPUT_NAME], ["act"], domain=contract.onnx_domain, alpha=alpha,
                               plugin_version=contract.plugin_version, plugin_namespace=contract.plugin_namespace)
    else:
        elu = helper.make_node("Elu", [INPUT_NAME], ["act"], alpha=alpha)
    flatten = helper.make_node("Flatten", ["act"], [OUTPUT_NAME], axis=1)
    graph = helper.make_graph([elu, flatten], "elu_plugin",
                              [helper.make_tensor_value_info(INPUT_NAME, onnx_type, ["batch", 1, 4, 4])],
                              [helper.make_tensor_value_info(OUTPUT_NAME, onnx_type, ["batch", 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid(contract.onnx_domain, 1)])
    onnx.save(model, str(path))
    return path


def numpy_elu(x, alpha):
    return np.where(x > 0, x, alpha * np.expm1(x))


def test_plugin_creator_registered_with_contract_strings(trt, plugin_library):
    contract = elu_plugin_contract()
    creator = trt.get_plugin_registry().get_creator(contract.plugin_name, contract.plugin_version,
                                                    contract.plugin_namespace)
    assert creator is not None
    assert [f.name for f in creator.field_names] == list(contract.fields)
    assert [f.type for f in creator.field_names] == [getattr(trt.PluginFieldType, t.upper()) for t in contract.fields.values()]


def test_engines_are_built_without_tf32(trt):
    from elunet.plugins.engine_builder import EngineOptions, builder_config

    config = builder_config(trt, trt.Builder(trt.Logger(trt.Logger.ERROR)), EngineOptions())
    assert not config.get_flag(trt.BuilderFlag.TF32)


def test_engine_has_plugin_layers_and_matches_numpy(trt, plugin_library, tmp_path):
    from elunet.plugins.engine_builder import EngineOptions, build_engine
    from elunet.runtime import open_engine

    onnx_path = elu_plugin_onnx(tmp_path / "model.onnx", alpha=0.7)
    built = build_engine(onnx_path, EngineOptions(min_batch=1, opt_batch=4, max_batch=8,
                                                  timing_cache=tmp_path / "timing.cache"))
    assert built.plugin_layers == built.elu_plugin_nodes == 1
    assert (tmp_path / "timing.cache").stat().st_size > 0
    plan = tmp_path / "model.plan"
    plan.write_bytes(built.plan)
    with open_engine("tensorrt", plan, device="cuda") as engine:
        assert engine.max_batch_size == 8, "the engine reports its profile's maximum"
        first, second = engine.create_instance(), engine.create_instance()  # one context, stream and buffers each
        for batch in (1, 3, 8, 13):  # 13 > max: split into chunks
            x = np.random.default_rng(batch).normal(size=(batch, 1, 4, 4)).astype(np.float32) * 3
            for instance in (first, second):
                np.testing.assert_allclose(instance.infer(x), numpy_elu(x, 0.7).reshape(batch, 16), rtol=1e-5, atol=1e-6)
        first.close()
        second.close()


# A process of its own: in this one the plugin may already be registered by another test.
OPEN_IN_A_NEW_PROCESS = """
import sys
import numpy as np
from elunet.plugins.library import elu_creator_registered
from elunet.plugins.tensorrt_import import import_tensorrt
from elunet.runtime import open_engine

x = np.linspace(-3, 3, 16, dtype=np.float32).reshape(1, 1, 4, 4)
with open_engine("tensorrt", sys.argv[1], device="cuda") as engine:
    got = engine.create_instance().infer(x)
want = np.where(x > 0, x, float(sys.argv[2]) * np.expm1(x)).reshape(1, 16)
print("registered" if elu_creator_registered(import_tensorrt()) else "not registered", float(np.abs(got - want).max()))
"""


def open_in_a_new_process(plan, alpha: float) -> tuple[str, float]:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", OPEN_IN_A_NEW_PROCESS, str(plan), str(alpha)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    registered, error = done.stdout.strip().rsplit(" ", 1)
    return registered, float(error)


@pytest.mark.parametrize("elu_mode", ["native", "plugin"])
def test_an_engine_loads_the_plugin_library_only_when_it_uses_the_plugin(trt, tmp_path, elu_mode):
    """A native-Elu engine opens with no plugin library anywhere; a plugin engine, published with its card, gets it."""
    from elunet.card import CARD_FILE
    from elunet.plugins import library
    from elunet.plugins.engine_builder import EngineOptions, build_engine
    from test_plugins_python import synthetic_card

    if elu_mode == "plugin":
        try:
            library.load_plugin_library()
        except ElunetError as exc:
            pytest.skip(f"plugin library not built: {exc.message}")
    built = build_engine(elu_plugin_onnx(tmp_path / "model.onnx", alpha=0.7, plugin=elu_mode == "plugin"),
                         EngineOptions(min_batch=1, opt_batch=1, max_batch=2))
    plan = tmp_path / "model.plan"
    plan.write_bytes(built.plan)
    synthetic_card(elu_mode).save(tmp_path / CARD_FILE)
    registered, error = open_in_a_new_process(plan, 0.7)
    assert registered == ("registered" if elu_mode == "plugin" else "not registered")
    assert error < 1e-5


BUILD_WITH_THE_PYTHON_PLUGIN = """
import sys
from pathlib import Path
from elunet.plugins.engine_builder import EngineOptions, build_engine

built = build_engine(Path(sys.argv[1]), EngineOptions(min_batch=1, opt_batch=1, max_batch=2, python_plugin=True))
assert built.plugin_layers == built.elu_plugin_nodes == 1, (built.plugin_layers, built.elu_plugin_nodes)
Path(sys.argv[2]).write_bytes(built.plan)
"""


def test_python_plugin_engine_builds_and_loads_in_a_new_process_with_the_compiled_library(trt, tmp_path):
    """The Python plugin's shape function takes the alpha TensorRT passes (else: "parser rejected"), and its
    engine serializes alpha as one float32, which the compiled creator accepts when another process loads it."""
    import subprocess
    import sys

    from elunet.card import CARD_FILE
    from elunet.plugins import library
    from test_plugins_python import synthetic_card

    pytest.importorskip("torch", reason="the Python plugin runs PyTorch's ELU")
    pytest.importorskip("tensorrt.plugin", reason="the Python plugin API needs TensorRT 10.6 or newer")
    try:
        library.find_plugin_library()
    except ElunetError as exc:
        pytest.skip(f"plugin library not built: {exc.message}")
    plan = tmp_path / "model.plan"
    done = subprocess.run([sys.executable, "-c", BUILD_WITH_THE_PYTHON_PLUGIN,
                           str(elu_plugin_onnx(tmp_path / "model.onnx", alpha=0.7)), str(plan)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    synthetic_card("plugin").save(tmp_path / CARD_FILE)
    registered, error = open_in_a_new_process(plan, 0.7)
    assert registered == "registered" and error < 1e-5


def test_int8_export_builds_an_explicitly_quantized_engine(trt, tmp_path):
    """An untrained fashion-cnn quantized on synthetic pixels: the engine's structure and its agreement with ONNX Runtime."""
    pytest.importorskip("torch")
    import onnx

    from elunet.export.graph_checks import check_qdq_graph
    from elunet.export.quantize import quantize_qdq
    from elunet.export.settings import ExportSettings
    from elunet.plugins.engine_builder import EngineOptions, build_engine
    from elunet.runtime import open_engine
    from test_export_graph import exported

    card, _, proto = exported("fashion-cnn", 1.0, ExportSettings(dtype="int8"))
    synthetic = np.random.default_rng(0).random((64, *card.input_shape), dtype=np.float32)
    quantized = quantize_qdq(proto, synthetic, "minmax")
    check_qdq_graph(quantized)
    onnx_path = tmp_path / "model.onnx"
    onnx.save(quantized, str(onnx_path))
    built = build_engine(onnx_path, EngineOptions(min_batch=1, opt_batch=8, max_batch=16))
    assert built.quantize_nodes > 0 and built.int8_layers > 0
    plan = tmp_path / "model.plan"
    plan.write_bytes(built.plan)
    x = synthetic[:16]
    with open_engine("tensorrt", plan, device="cuda") as engine, open_engine("onnxruntime", onnx_path, device="cpu") as reference:
        got, want = engine.create_instance().infer(x), reference.create_instance().infer(x)
    # Both compute the same int8 graph; kernels may round differently by a quantization step.
    np.testing.assert_allclose(got, want, atol=0.05 * float(np.abs(want).max()))
