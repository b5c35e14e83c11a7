"""Backend choice (`--backend auto`) and its explanations, on real model folders."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from fixtures_serve import LINEAR

from elunet.errors import ElunetError
from elunet.repository import ModelRepository
from elunet.serve.backends import open_backend


def test_auto_picks_onnxruntime_cpu_and_says_why_not_the_gpu_paths(synthetic_repository, caplog):
    version = ModelRepository(synthetic_repository).get(LINEAR)
    with caplog.at_level(logging.INFO, logger="elunet.serve"):
        backend = open_backend(version, "auto", None, 8)
    assert (backend.kind, backend.device) == ("onnxruntime", "cpu")
    assert "no model.plan" in caplog.text and "no CUDA provider" in caplog.text


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
def test_a_plugin_export_runs_in_onnxruntime_through_its_onnx_function(plugin_export, caplog):
    with caplog.at_level(logging.INFO, logger="elunet.serve"):
        backend = open_backend(plugin_export, "auto", None, 8)
    assert (backend.kind, backend.device) == ("onnxruntime", "cpu")
    x = np.random.default_rng(0).random((3, *plugin_export.card.input_shape), dtype=np.float32)
    reference = open_backend(plugin_export, "torch", "cpu", 8).infer(x)
    np.testing.assert_allclose(backend.infer(x), reference, atol=1e-4, rtol=1e-4)


def test_an_engine_only_version_is_refused_by_onnxruntime_with_a_hint(exported_repository, tmp_path):
    name = ModelRepository(exported_repository).models()[0]
    shutil.copytree(exported_repository / name, tmp_path / name)
    (tmp_path / name / "1" / "model.onnx").unlink()
    version = ModelRepository(tmp_path).get(name)
    with pytest.raises(ElunetError, match="no model.onnx") as err:
        open_backend(version, "onnxruntime", "cpu", 8)
    assert "elunet export" in err.value.hint


def test_a_gpu_request_without_any_gpu_path_is_explained(synthetic_repository):
    version = ModelRepository(synthetic_repository).get(LINEAR)  # no checkpoint weights: torch cannot help either
    with pytest.raises(ElunetError, match="asked for a GPU") as err:
        open_backend(version, "auto", "cuda:1", 8)
    assert "no model.plan" in err.value.message and "no CUDA provider" in err.value.message
