"""elunet.runtime: the engines verify and serve share, their instances, the choice of engine, CPU shares."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures_serve import LINEAR

from elunet.errors import ElunetError
from elunet.repository import ModelRepository
from elunet.runtime import open_engine
from elunet.runtime.choose import choose_engine
from elunet.runtime.cpus import available_cpus, cpu_name, threads_per_instance

ROOT = Path(__file__).resolve().parents[1]


def open_choice(version, kind="auto", device=None):
    choice = choose_engine(version, kind, device)
    return choice, open_engine(choice.kind, choice.path, device=choice.device)


def test_auto_picks_onnxruntime_cpu_and_says_why_not_the_gpu_paths(synthetic_repository):
    choice, engine = open_choice(ModelRepository(synthetic_repository).get(LINEAR))
    assert (choice.kind, choice.device, engine.kind, engine.device) == ("onnxruntime", "cpu", "onnxruntime", "cpu")
    assert "no model.plan" in choice.why and "no CUDA provider" in choice.why


def test_each_instance_has_its_own_session_and_computes_the_same(synthetic_repository):
    version = ModelRepository(synthetic_repository).get(LINEAR)
    engine = open_engine("onnxruntime", version.model_file(), device="cpu", cpu_threads=1)
    first, second = engine.create_instance(), engine.create_instance()
    assert first.session is not second.session and (first.index, second.index) == (0, 1)
    x = np.random.default_rng(0).random((5, *version.card.input_shape), dtype=np.float32)
    np.testing.assert_array_equal(first.infer(x), second.infer(x))
    assert (engine.input.dims, engine.output.dims) == (tuple(version.card.input_shape), (version.card.num_classes,))


def _model_openers(path: Path) -> list[str]:
    constructors = {"InferenceSession", "create_execution_context", "deserialize_cuda_engine", "load_checkpoint"}
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in constructors:
                found.append(name)
    return found


def test_no_stage_opens_a_model_but_through_the_runtime():
    """verify and serve run the same engine code: outside elunet/runtime nothing constructs an ONNX Runtime
    session or a TensorRT execution context, so neither stage can drift into its own."""
    assert {"InferenceSession", "create_execution_context", "load_checkpoint"} <= {
        name for path in (ROOT / "elunet" / "runtime").glob("*.py") for name in _model_openers(path)
    }, "the scan must see the runtime's own sessions, or it proves nothing"
    offenders = {}
    for stage in ("export", "serve", "plugins"):
        for path in (ROOT / stage).rglob("*.py"):
            found = [name for name in _model_openers(path) if name != "load_checkpoint"]
            if found:
                offenders[str(path.relative_to(ROOT))] = sorted(set(found))
    # The plugins stage deserializes a just-built engine to inspect it (layers, I/O types); it runs nothing.
    assert offenders == {"plugins/engine_builder.py": ["deserialize_cuda_engine"]}, offenders
    assert not _model_openers(ROOT / "serve" / "loader.py") and "open_engine" in (ROOT / "serve" / "loader.py").read_text() and "open_engine" in (ROOT / "export" / "verify.py").read_text()


def test_importing_the_runtime_imports_no_engine_library():
    code = "import sys, elunet.runtime, elunet.runtime.choose; print(sorted(m for m in ('torch', 'onnxruntime', 'tensorrt') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr


def test_cpu_count_follows_cgroup_quota_and_is_shared_among_instances(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs
    assert available_cpus(tmp_path) == min(2, available_cpus(tmp_path / "none"))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == available_cpus(tmp_path / "none")
    assert threads_per_instance(3, cpus=8) == 2 and threads_per_instance(5, cpus=2) == 1


def test_cpu_name_says_whether_int8_has_vnni(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\n")
    assert cpu_name(info) == "AMD EPYC (avx2; no VNNI)"
    info.write_text("model name\t: Intel(R) Xeon(R) Platinum 8488C\nflags\t\t: avx2 avx512f avx512_vnni amx_int8\n")
    assert cpu_name(info) == "Intel(R) Xeon(R) Platinum 8488C (avx2, avx512f, avx512_vnni, amx_int8)"
    assert cpu_name(tmp_path / "none")  # no /proc/cpuinfo: what the platform module knows


@pytest.fixture(scope="module")
def plugin_export(trained_checkpoint, tmp_path_factory):
    """The trained checkpoint exported with `--elu plugin` into its own repository."""
    from elunet.export.pipeline import export_checkpoint
    from elunet.export.settings import ExportSettings

    root = tmp_path_factory.mktemp("plugin-export") / "repository"
    result = export_checkpoint(trained_checkpoint, ExportSettings(elu_mode="plugin"), repository=root, images=64)
    assert result.passed
    return ModelRepository(root).get(result.card.name)


@pytest.mark.slow
def test_a_plugin_export_runs_in_onnxruntime_through_its_onnx_function(plugin_export):
    choice, engine = open_choice(plugin_export)
    assert (engine.kind, engine.device) == ("onnxruntime", "cpu")
    x = np.random.default_rng(0).random((3, *plugin_export.card.input_shape), dtype=np.float32)
    reference = open_choice(plugin_export, "torch", "cpu")[1].create_instance().infer(x)
    np.testing.assert_allclose(engine.create_instance().infer(x), reference, atol=1e-4, rtol=1e-4)


def test_an_engine_only_version_is_refused_by_onnxruntime_with_a_hint(exported_repository, tmp_path):
    name = ModelRepository(exported_repository).models()[0]
    shutil.copytree(exported_repository / name, tmp_path / name)
    (tmp_path / name / "1" / "model.onnx").unlink()
    version = ModelRepository(tmp_path).get(name)
    with pytest.raises(ElunetError, match="no model.onnx") as err:
        choose_engine(version, "onnxruntime", "cpu")
    assert "elunet export" in err.value.hint


def test_a_gpu_request_without_any_gpu_path_is_explained(synthetic_repository):
    version = ModelRepository(synthetic_repository).get(LINEAR)  # no checkpoint weights: torch cannot help either
    with pytest.raises(ElunetError, match="asked for a GPU") as err:
        choose_engine(version, "auto", "cuda:1")
    assert "no model.plan" in err.value.message and "no CUDA provider" in err.value.message


def test_backend_tensorrt_without_a_device_opens_on_the_gpu(synthetic_repository, tmp_path):
    """The serve-trt image and compose service set only ELUNET_BACKEND=tensorrt: the device must follow the backend."""
    shutil.copytree(synthetic_repository / LINEAR, tmp_path / LINEAR)
    version = ModelRepository(tmp_path).get(LINEAR)
    version.model_file("tensorrt_plan").write_bytes(b"an engine; choosing does not open it")
    choice = choose_engine(version, "tensorrt", None)
    assert (choice.kind, choice.device, choice.path.name) == ("tensorrt", "cuda:0", "model.plan")
    assert choose_engine(version, "onnxruntime", None).device == "cpu"


def test_onnxruntime_cuda_provider_is_opened_without_tf32():
    from elunet.runtime.onnxruntime_engine import provider_options

    assert provider_options("CUDAExecutionProvider", 1) == {"device_id": 1, "use_tf32": 0}


@pytest.mark.gpu
def test_onnxruntime_cuda_session_runs_without_tf32(synthetic_repository):
    """What the CUDA provider says it was given (ONNX Runtime's own record), on a GPU with onnxruntime-gpu."""
    from elunet.runtime.onnxruntime_engine import available_providers

    if "CUDAExecutionProvider" not in available_providers():
        pytest.skip(f"this onnxruntime has no CUDA provider (it has {available_providers()}): needs onnxruntime-gpu and a GPU")
    version = ModelRepository(synthetic_repository).get(LINEAR)
    with open_engine("onnxruntime", version.model_file(), device="cuda") as engine:
        session = engine.create_instance().session
        assert "CUDAExecutionProvider" in session.get_providers()
        assert session.get_provider_options()["CUDAExecutionProvider"]["use_tf32"] == "0"
