"""elunet.plugins on a machine without TensorRT: library search, errors, the CLI."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from elunet.errors import ElunetError
from elunet.plugins import library
from elunet.plugins.engine_builder import EngineOptions, tensorrt_config

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


def test_tensorrt_config_has_platform_batch_and_io():
    text = tensorrt_config("fmnist-trt", 32, {"input": ("TYPE_FP32", (1, 28, 28)), "logits": ("TYPE_FP32", (10,))})
    assert 'platform: "tensorrt_plan"' in text and "max_batch_size: 32" in text
    assert "dims: [ 1, 28, 28 ]" in text and "dims: [ 10 ]" in text and 'label_filename: "labels.txt"' in text


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here; this checks the error without it")
def test_build_engine_without_tensorrt_names_what_is_missing(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not used")
    done = subprocess.run([sys.executable, "-m", "elunet", "build-engine", str(model)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "TensorRT is not available" in done.stderr and "TensorRT container" in done.stderr


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here; this checks the error without it")
def test_tensorrt_runner_without_tensorrt_is_an_elunet_error(tmp_path):
    from elunet.export.runners import open_runner

    with pytest.raises(ElunetError, match="tensorrt"):
        open_runner("tensorrt", tmp_path / "model.plan", max_batch_size=4)


def test_python_plugin_module_imports_without_tensorrt():
    # The module must import (for --help and docs); TensorRT is needed only when registering.
    import elunet.plugins.python_plugin as python_plugin

    if not HAS_TENSORRT:
        with pytest.raises(ElunetError, match="TensorRT is not available"):
            python_plugin.register_python_plugin()
