"""Backend choice (`--backend auto`) and its explanations, on real model folders."""

from __future__ import annotations

import json
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


@pytest.fixture()
def plugin_export(exported_repository, tmp_path):
    """The real exported version, relabelled as an ELU-plugin export (as `elunet export --elu plugin` writes)."""
    repository = tmp_path / "repository"
    name = ModelRepository(exported_repository).models()[0]
    shutil.copytree(exported_repository / name, repository / name)
    card_file = repository / name / "1" / "card.json"
    card = json.loads(card_file.read_text())
    card["export"]["elu_mode"] = "plugin"
    card_file.write_text(json.dumps(card))
    return ModelRepository(repository).get(name)


@pytest.mark.slow
def test_a_plugin_export_is_refused_by_onnxruntime_and_auto_serves_its_checkpoint_with_torch(plugin_export, caplog):
    with pytest.raises(ElunetError, match="plugin op, which only TensorRT runs"):
        open_backend(plugin_export, "onnxruntime", "cpu", 8)
    with caplog.at_level(logging.INFO, logger="elunet.serve"):
        backend = open_backend(plugin_export, "auto", None, 8)
    assert backend.kind == "torch" and "only TensorRT runs" in caplog.text
    x = np.random.default_rng(0).random((3, *plugin_export.card.input_shape), dtype=np.float32)
    reference = open_backend(plugin_export, "torch", "cpu", 8).infer(x)
    np.testing.assert_array_equal(backend.infer(x), reference)


def test_a_gpu_request_without_any_gpu_path_is_explained(synthetic_repository):
    version = ModelRepository(synthetic_repository).get(LINEAR)  # no checkpoint weights: torch cannot help either
    with pytest.raises(ElunetError, match="asked for a GPU") as err:
        open_backend(version, "auto", "cuda:1", 8)
    assert "no model.plan" in err.value.message and "no CUDA provider" in err.value.message
