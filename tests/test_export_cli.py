"""`elunet export` / `elunet verify` on the command line, and every refusal leaving nothing half written."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elunet.card import CARD_FILE, ModelCard, Preprocessing
from elunet.contracts import WEIGHTS_FILE
from elunet.errors import ElunetError
from elunet.export.pipeline import export_checkpoint
from elunet.export.settings import ExportSettings
from elunet.certificate import RunsOn, certificate_problem
from elunet.repository import PARITY_FILE
from elunet.train.checkpoint import save_checkpoint
from elunet.train.data import FASHION_MNIST_LABELS
from elunet.train.models import build_model


def elunet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "elunet", *map(str, args)], capture_output=True, text=True, timeout=600)


def untrained_checkpoint(folder: Path, activation: str = "elu", scale_head: float = 1.0) -> Path:
    """A fashion-cnn checkpoint with initial weights: enough for the refusals, which happen before parity matters."""
    card = ModelCard(
        name="untrained",
        architecture="fashion-cnn",
        activation=activation,
        alpha=1.0 if activation == "elu" else None,
        dataset="fashion-mnist",
        labels=FASHION_MNIST_LABELS,
        preprocessing=Preprocessing(channels=1, height=28, width=28, color_mode="L", normalization="meanstd"),
    )
    torch.manual_seed(0)
    model = build_model(card)
    with torch.no_grad():
        model.body.fc.weight *= scale_head
    save_checkpoint(folder, model, card)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("cli") / "ckpt")


def assert_nothing_written(*places: Path) -> None:
    for place in places:
        assert not place.exists() or not any(place.iterdir()), f"{place} holds {sorted(p.name for p in place.iterdir())}"


@pytest.mark.slow
def test_cli_writes_out_file_and_verify_passes(checkpoint, tmp_path):
    out = tmp_path / "models" / "model.onnx"
    run = elunet("export", checkpoint, "--out", out, "--elu", "plugin", "--images", 64)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out)
    assert "parity PASSED" in run.stderr and "5 ELU layers as plugin nodes" in run.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, CARD_FILE, PARITY_FILE])
    verified = elunet("verify", out, "--checkpoint", checkpoint, "--images", 32, "--report", tmp_path / "again.json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads((tmp_path / "again.json").read_text())["passed"] is True
    # The same --out again is refused without --force, and nothing changes.
    before = out.read_bytes()
    with pytest.raises(ElunetError, match="already exist") as err:
        export_checkpoint(checkpoint, ExportSettings(), out=out, skip_verify=True)
    assert "--force" in str(err.value) and out.read_bytes() == before
    # --force --skip-verify replaces it, and the old certificate, which is not this model's, goes.
    export_checkpoint(checkpoint, ExportSettings(dtype="fp16"), out=out, skip_verify=True, force=True)
    assert out.read_bytes() != before and not out.with_name(PARITY_FILE).exists()
    assert ModelCard.load(out.with_name(CARD_FILE)).export.parity == "skipped"


@pytest.mark.slow
def test_two_models_in_one_folder_keep_their_own_card_and_certificate(trained_checkpoint, tmp_path):
    export_checkpoint(trained_checkpoint, ExportSettings(), out=tmp_path / "a.onnx", images=64)
    export_checkpoint(trained_checkpoint, ExportSettings(dtype="fp16"), out=tmp_path / "b.onnx", skip_verify=True, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.card.json", "a.onnx", "a.parity.json", "b.card.json", "b.onnx"]
    assert json.loads((tmp_path / "a.parity.json").read_text())["model"]["file"] == "a.onnx"
    assert certificate_problem(tmp_path / "a.onnx", RunsOn("onnxruntime", "cpu")) is None
    assert ModelCard.load(tmp_path / "a.card.json").export.dtype == "fp32" and ModelCard.load(tmp_path / "b.card.json").export.dtype == "fp16"


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed: its runner is tested in test_plugins_*")
def test_verify_with_tensorrt_explains_what_is_missing(tmp_path):
    from elunet.runtime import open_engine

    with pytest.raises(ElunetError, match="TensorRT") as err:
        open_engine("tensorrt", tmp_path / "model.onnx", device="cuda", max_batch_size=8)
    assert err.value.hint


def test_cli_errors_are_one_clear_message(tmp_path):
    run = elunet("export", tmp_path / "nowhere", "--out", tmp_path / "m.onnx")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "does not exist" in run.stderr and "hint:" in run.stderr
    assert_nothing_written(tmp_path)
    # The input is checked first: an existing output is not what is wrong with this command.
    (tmp_path / "m.onnx").write_bytes(b"an earlier export")
    run = elunet("export", tmp_path / "nowhere", "--out", tmp_path / "m.onnx")
    assert run.returncode == 2 and f"checkpoint path {tmp_path / 'nowhere'} does not exist" in run.stderr and "already exist" not in run.stderr


def test_missing_corrupt_and_mismatched_checkpoints_are_refused(checkpoint, tmp_path):
    repo = tmp_path / "repository"
    broken = Path(shutil.copytree(checkpoint, tmp_path / "broken"))
    # weights replaced after the card was written
    (broken / WEIGHTS_FILE).write_bytes((broken / WEIGHTS_FILE).read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ElunetError, match="its card expects"):
        export_checkpoint(broken, ExportSettings(), repository=repo)
    # corrupt weights that match a (rewritten) card: the safetensors reader refuses them
    card = ModelCard.load(broken / CARD_FILE)
    (broken / WEIGHTS_FILE).write_bytes(b"not safetensors at all")
    from elunet.train.checkpoint import sha256_file

    card.model_copy(update={"weights_sha256": sha256_file(broken / WEIGHTS_FILE)}).save(broken / CARD_FILE)
    with pytest.raises(ElunetError, match="cannot read|truncated or corrupt"):
        export_checkpoint(broken, ExportSettings(), repository=repo)
    # a card naming an architecture elunet does not know
    unknown = Path(shutil.copytree(checkpoint, tmp_path / "unknown"))
    ModelCard.load(unknown / CARD_FILE).model_copy(update={"architecture": "resnet-50"}).save(unknown / CARD_FILE)
    with pytest.raises(ElunetError, match="unknown architecture 'resnet-50'"):
        export_checkpoint(unknown, ExportSettings(), repository=repo)
    (unknown / CARD_FILE).unlink()
    with pytest.raises(ElunetError, match="not a checkpoint"):
        export_checkpoint(unknown, ExportSettings(), repository=repo)
    assert not repo.exists()


def test_an_opset_the_exporter_cannot_write_is_refused_before_any_work(checkpoint, tmp_path):
    with pytest.raises(ElunetError, match="opsets 18..23"):
        export_checkpoint(checkpoint, ExportSettings(opset=11), out=tmp_path / "m.onnx")
    assert_nothing_written(tmp_path)


def test_plugin_mode_needs_elu_layers(tmp_path):
    relu = untrained_checkpoint(tmp_path / "relu", activation="relu")
    with pytest.raises(ElunetError, match="has no ELU layers"):
        export_checkpoint(relu, ExportSettings(elu_mode="plugin"), repository=tmp_path / "repository", skip_verify=True)
    assert not (tmp_path / "repository").exists()


def test_out_and_repository_are_exclusive(checkpoint, tmp_path):
    with pytest.raises(ElunetError, match="exactly one of --out FILE and --repository DIR"):
        export_checkpoint(checkpoint, ExportSettings(), out=tmp_path / "m.onnx", repository=tmp_path / "r")
    with pytest.raises(ElunetError, match="exactly one"):
        export_checkpoint(checkpoint, ExportSettings())


@pytest.mark.slow
def test_a_failed_parity_publishes_nothing(tmp_path):
    """A real failure: with the head's weights scaled by 1e6, the fp16 graph's rounding errors exceed
    the fp16 tolerance (atol and rtol 1e-2) by far; PyTorch computes in float32."""
    overflowing = untrained_checkpoint(tmp_path / "ckpt", scale_head=1e6)
    result = export_checkpoint(overflowing, ExportSettings(dtype="fp16"), out=tmp_path / "new" / "model.onnx", images=32)
    assert not result.passed and result.report.data["summary"]["needed_atol"] > 1.0
    assert not (tmp_path / "new").exists()
    repo = tmp_path / "repository"
    run = elunet("export", overflowing, "--repository", repo, "--dtype", "fp16", "--images", 32)
    assert run.returncode == 1, run.stderr
    assert "parity FAILED" in run.stderr and "nothing was written" in run.stderr
    assert not repo.exists() or not any(repo.rglob("*"))
