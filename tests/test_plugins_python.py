"""elunet.plugins on a machine without TensorRT: library search, errors, the CLI."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from elunet.errors import ElunetError
from elunet.plugins import library
from elunet.plugins.engine_builder import EngineOptions

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def test_search_order_explicit_then_env_then_build_then_package(tmp_path, monkeypatch):
    env_lib = tmp_path / "env" / library.LIBRARY_FILE
    monkeypatch.setenv(library.LIBRARY_ENV, str(env_lib))
    explicit = tmp_path / "explicit.so"
    assert library.candidate_paths(explicit) == [
        explicit, env_lib, library.SOURCE_BUILD_DIR / library.LIBRARY_FILE, library.PACKAGE_DIR / library.LIBRARY_FILE]
    env_lib.parent.mkdir()
    env_lib.write_bytes(b"")
    assert library.find_plugin_library() == env_lib.resolve()


def test_missing_library_error_says_where_it_looked_and_how_to_build(tmp_path, monkeypatch):
    monkeypatch.setenv(library.LIBRARY_ENV, str(tmp_path / "nowhere.so"))
    monkeypatch.setattr(library, "SOURCE_BUILD_DIR", tmp_path / "build")
    monkeypatch.setattr(library, "PACKAGE_DIR", tmp_path / "pkg")
    with pytest.raises(ElunetError) as err:
        library.find_plugin_library()
    assert str(tmp_path / "nowhere.so") in err.value.message
    assert "cmake -S plugins/elu" in err.value.hint and library.LIBRARY_ENV in err.value.hint


def test_explicit_library_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(ElunetError, match="does not exist"):
        library.find_plugin_library(tmp_path / "missing.so")


@pytest.mark.parametrize("batches", [(0, 1, 1), (2, 1, 4), (1, 8, 4)])
def test_batch_profile_must_be_ordered(batches):
    lo, opt, hi = batches
    with pytest.raises(ElunetError, match="min <= opt <= max"):
        EngineOptions(min_batch=lo, opt_batch=opt, max_batch=hi).validate()


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here; this checks the error without it")
def test_build_engine_without_tensorrt_names_what_is_missing(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not used")
    done = subprocess.run([sys.executable, "-m", "elunet", "build-engine", str(model), "--skip-verify"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "TensorRT is not available" in done.stderr and "TensorRT container" in done.stderr


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here; this checks the error without it")
def test_tensorrt_engine_without_tensorrt_is_an_elunet_error(tmp_path):
    from elunet.runtime import open_engine

    with pytest.raises(ElunetError, match="TensorRT"):
        open_engine("tensorrt", tmp_path / "model.plan", device="cuda")


def test_python_plugin_module_imports_without_tensorrt():
    # The module must import (for --help and docs); TensorRT is needed only when registering.
    import elunet.plugins.python_plugin as python_plugin

    if not HAS_TENSORRT:
        with pytest.raises(ElunetError, match="TensorRT is not available"):
            python_plugin.register_python_plugin()


def synthetic_card(elu_mode="plugin"):
    from elunet.card import ExportInfo, ModelCard, Preprocessing

    return ModelCard(
        name="synthetic-elu", architecture="synthetic", activation="elu", alpha=1.0, dataset="synthetic",
        labels=[f"class-{i}" for i in range(10)],
        preprocessing=Preprocessing(channels=1, height=8, width=8, color_mode="L", normalization="none"),
        export=ExportInfo(elu_mode=elu_mode, opset=18, dtype="fp16", exporter="dynamo",
                          source_checkpoint_sha256="0" * 64, parity="passed"),
    )


def test_an_engine_needs_the_plugin_only_when_its_card_says_plugin(tmp_path):
    from elunet.card import CARD_FILE
    from elunet.runtime.tensorrt_engine import engine_uses_elu_plugin

    plan = tmp_path / "model.plan"
    assert engine_uses_elu_plugin(plan) is None  # nothing says: nothing is loaded, and a failure says why
    synthetic_card("native").save(tmp_path / CARD_FILE)
    assert engine_uses_elu_plugin(plan) is False
    synthetic_card("plugin").save(tmp_path / CARD_FILE)
    assert engine_uses_elu_plugin(plan) is True


def test_build_engine_verifies_with_the_card_beside_the_staged_engine(tmp_path, monkeypatch):
    """`build-engine --checkpoint` opens the staged plan the way serve will: the card must already be there,
    or a native engine's check would ask for the plugin library (and a plugin engine's would not load it)."""
    pytest.importorskip("elunet.export.repository_writer", reason="the export stage is not installed")
    from elunet.plugins import publish_engine as publishing
    from elunet.plugins.engine_builder import BuiltEngine
    from elunet.runtime.tensorrt_engine import engine_uses_elu_plugin

    seen = []

    class Stop(Exception):
        pass

    def verify_engine(plan_path, card, checkpoint, **_):
        seen.append(engine_uses_elu_plugin(plan_path))
        raise Stop  # only what the verifier would see matters here; nothing gets published

    monkeypatch.setattr(publishing, "engine_io_dtype", lambda plan: "fp32")
    monkeypatch.setattr(publishing, "verify_engine", verify_engine)
    built = BuiltEngine(plan=b"synthetic plan bytes", plugin_layers=0, elu_plugin_nodes=0)
    with pytest.raises(Stop):
        publishing.publish_engine(built, synthetic_card("native"), repository=tmp_path, name="synthetic-elu-trt",
                                  version=None, max_batch_size=16, checkpoint=tmp_path / "checkpoint", log=lambda line: None)
    assert seen == [False]


def test_publish_engine_writes_a_tensorrt_plan_version(tmp_path, monkeypatch):
    """The export stage's repository writer and Triton config, fed a plan; the bytes stand in for an engine
    (building one needs TensorRT), so only reading its I/O type is replaced."""
    pytest.importorskip("elunet.export.repository_writer", reason="the export stage is not installed")
    from elunet.plugins import publish_engine as publishing
    from elunet.plugins.engine_builder import BuiltEngine
    from elunet.repository import ModelRepository

    card = synthetic_card("plugin")
    monkeypatch.setattr(publishing, "engine_io_dtype", lambda plan: "fp32")
    built = BuiltEngine(plan=b"synthetic plan bytes", plugin_layers=3, elu_plugin_nodes=3)
    published = publishing.publish_engine(built, card, repository=tmp_path, name="synthetic-elu-trt", version=None,
                                          max_batch_size=16, log=lambda line: None)
    version = ModelRepository(tmp_path).get("synthetic-elu-trt")
    assert version.path == published.path and version.version == 1
    assert version.model_file("tensorrt_plan").read_bytes() == b"synthetic plan bytes"
    assert version.card.export.parity == "skipped"  # no --checkpoint: the card must not claim parity
    config = (tmp_path / "synthetic-elu-trt" / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in config and "max_batch_size: 16" in config


class _Desc:
    """Stands in for tensorrt.plugin's TensorDesc: the shape function only asks it for a like()."""

    def like(self):
        return "like x"


def _declared_python_plugin():
    """The Python plugin's functions with the signatures register_python_plugin shows tensorrt.plugin
    (its TensorDesc and Tensor classes replaced: this machine has no TensorRT)."""
    import types

    from elunet.plugins import python_plugin

    python_plugin.declare_signatures(types.SimpleNamespace(TensorDesc=_Desc, Tensor=object))
    return python_plugin


def test_python_plugin_shape_function_takes_the_attributes_tensorrt_passes():
    """tensorrt.plugin calls the shape function with the tensor descriptors and every attribute by keyword:
    a shape function that takes only x fails there, and the parser rejects the model."""
    python_plugin = _declared_python_plugin()
    field = python_plugin.alpha_field()
    alpha = np.array([0.5], np.float32)  # how a float32 field arrives from the ONNX parser or a plan
    assert python_plugin._elu_desc(_Desc(), **{field: alpha}) == "like x"
    assert python_plugin._elu_desc(_Desc(), alpha) == "like x"
    assert python_plugin._alpha({field: alpha}) == 0.5


def test_python_plugin_declares_its_field_as_the_contract_type():
    """tensorrt.plugin serializes an attribute as its declared numpy type; declared `float`, alpha went out as
    FLOAT64, and the compiled creator (like the contract) takes one FLOAT32: the engine would not load elsewhere."""
    import inspect
    import typing

    from elunet.contracts import elu_plugin_contract

    python_plugin = _declared_python_plugin()
    fields = elu_plugin_contract().fields
    for func in (python_plugin._elu_desc, python_plugin._elu_impl):
        declared = {name: p.annotation for name, p in inspect.signature(func).parameters.items() if name in fields}
        assert list(declared) == list(fields)
        for name, annotation in declared.items():
            (scalar,) = typing.get_args(typing.get_args(annotation)[-1])  # NDArray[T] is ndarray[shape, dtype[T]]
            assert np.dtype(scalar).name == fields[name]


def test_tensorrt_minimum_is_stated_once_in_pyproject_and_checked_at_run_time():
    import tomllib
    from pathlib import Path

    from elunet.plugins.tensorrt_import import MIN_TENSORRT

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    requirement = next(r for r in pyproject["project"]["optional-dependencies"]["tensorrt"] if r.startswith("tensorrt"))
    assert requirement == "tensorrt>=" + ".".join(map(str, MIN_TENSORRT))


def test_a_tensorrt_older_than_the_minimum_is_refused_with_the_reason(monkeypatch):
    import types

    from elunet.plugins.tensorrt_import import import_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.6.0.26", Builder=object))
    with pytest.raises(ElunetError, match="10.6.0.26 is too old") as err:
        import_tensorrt()
    assert "tensorrt>=10.7" in err.value.hint


def test_export_and_build_engine_name_the_max_batch_size_alike():
    """Both write a model's config.pbtxt max_batch_size: one flag, defined once (elunet.cli_options)."""
    from typer.main import get_command

    from elunet.cli import app

    commands = get_command(app).commands
    flags = {name: [p.opts for p in commands[name].params if p.name == "max_batch_size"] for name in ("export", "build-engine")}
    assert flags == {"export": [["--max-batch-size"]], "build-engine": [["--max-batch-size"]]}
    assert not [p for p in commands["build-engine"].params if "--max-batch" in p.opts]


def test_build_engine_without_a_checkpoint_demands_skip_verify(tmp_path):
    """Leaving out --checkpoint must not publish an unverified engine silently (checked before TensorRT is needed)."""
    done = subprocess.run([sys.executable, "-m", "elunet", "build-engine", str(tmp_path / "model.onnx")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--skip-verify" in done.stderr and "--checkpoint" in done.stderr, done.stderr
