"""Parity: the comparator's rules, and ONNX Runtime vs PyTorch on real Fashion-MNIST for every export flavour."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from elunet.card import CARD_FILE, ModelCard
from elunet.errors import ElunetError
from elunet.export.card_metadata import card_from_onnx
from elunet.certificate import RunsOn, certificate_problem, target_certificate
from elunet.export.parity import Tolerance, compare, criteria
from elunet.export.verify import ParityReport, verify_model, write_certificate
from elunet.repository import PARITY_FILE, side_file
from elunet.train.checkpoint import load_checkpoint
from fixtures_export import TEST_PARITY_IMAGES

# ------------------------------------------------------------------ the comparator


def test_an_element_fails_only_when_both_tolerances_are_exceeded():
    tol = Tolerance(atol=1e-3, rtol=1e-2)
    ref = np.array([[0.0, 100.0, 1.0]])
    assert compare(ref, ref + [[5e-4, 0.0, 0.0]], tol).passed  # abs ok, rel inf
    assert compare(ref, ref + [[0.0, 0.5, 0.0]], tol).passed  # abs 0.5 > atol, rel 0.005 ok
    bad = compare(ref, ref + [[0.0, 0.0, 0.05]], tol)  # abs 0.05 and rel 0.05: both over
    assert not bad.passed and bad.failed_elements == 1
    assert bad.max_abs_err == pytest.approx(0.05) and bad.max_rel_err == pytest.approx(0.05)
    assert bad.needed_atol == pytest.approx(0.05)  # at rtol 1e-2 only atol 0.05 passes it
    assert bad.needed_rtol == pytest.approx(0.05)


def test_a_top1_flip_beyond_tolerance_fails_and_a_near_tie_within_it_does_not():
    tol = Tolerance(atol=1e-2, rtol=1e-2, min_top1=1.0)
    # Synthetic logits; row 0: the demo's fp16 near-tie (margin 5.1e-4), row 1: a clear margin of 2.
    ref = np.array([[7.03163, 7.03112, 0.0], [3.0, 1.0, 0.0]])
    tie_swapped = np.array([[7.031, 7.032, 0.0], [3.0, 1.0, 0.0]])
    result = compare(ref, tie_swapped, tol)
    assert result.passed and result.top1_agreement == 0.5 and result.top1_flips == 0
    assert compare(ref[:1], tie_swapped[:1], tol).passed  # a one-image set does not fail whole on a near-tie
    flipped = compare(ref, np.array([[7.03163, 7.03112, 0.0], [1.0, 3.0, 0.0]]), tol)
    assert not flipped.passed and flipped.top1_flips == 1


def test_the_comparator_reports_error_statistics_like_polygraphy():
    ref = np.ones((4, 25))  # synthetic: errors 0, 0.001, ..., 0.099, the largest at [3, 24]
    result = compare(ref, ref + np.arange(100).reshape(4, 25) * 1e-3, Tolerance(atol=1.0, rtol=1.0))
    for stats in (result.abs_err, result.rel_err):
        assert stats == pytest.approx({"max": 0.099, "mean": 0.0495, "median": 0.050, "p90": 0.090, "p99": 0.099})
    assert result.worst_index == [3, 24]


def test_nonfinite_outputs_fail_unless_the_reference_has_them_too():
    tol = Tolerance(atol=1e-4, rtol=1e-4)
    ref = np.array([[np.nan, np.inf, 1.0]])
    assert compare(ref, ref.copy(), tol).passed
    result = compare(ref, np.array([[np.nan, np.inf, np.inf]]), tol)
    assert not result.passed and result.nonfinite_mismatches == 1 and math.isinf(result.max_abs_err)


def test_default_tolerances_follow_the_graph_dtype():
    assert Tolerance.for_dtype("fp32") == Tolerance(1e-4, 1e-4, 1.0)
    assert Tolerance.for_dtype("fp16") == Tolerance(1e-2, 1e-2, 1.0)
    assert Tolerance.for_dtype("fp16", atol=0.5).atol == 0.5


# ------------------------------------------------------------------ real exports


FLAVOURS = [("native", "fp32"), ("plugin", "fp32"), ("native", "fp16"), ("plugin", "fp16")]


@pytest.mark.slow
@pytest.mark.parametrize("elu_mode, dtype", FLAVOURS)
def test_onnx_runtime_matches_pytorch_on_real_fashion_mnist(fashion_export, trained_checkpoint, elu_mode, dtype):
    result = fashion_export(elu_mode, dtype)
    report = ParityReport.load(result.model_path.with_name(PARITY_FILE))
    assert result.passed and report.passed, "\n".join(report.lines())
    summary = "\n".join(report.lines())  # a number that needs explaining is explained on the lines printed
    assert "rel err = abs err / |reference|" in summary and "undefined (inf) where it is 0" in summary
    assert "atol needed: the smallest atol that passes every element at this rtol (0: rtol alone passes them all)" in summary
    data = report.data
    tol = Tolerance.for_dtype(dtype)
    assert (data["tolerance"]["atol"], data["tolerance"]["rtol"]) == (tol.atol, tol.rtol)
    assert data["model"]["dtype"] == dtype and data["model"]["elu_mode"] == elu_mode
    names = [s["name"] for s in data["sets"]]
    assert names[0] == "test-images" and {"batch-1", "batch-13", "large-magnitude", "negative-saturation", "zeros"} <= set(names)
    assert data["sets"][0]["images"] == TEST_PARITY_IMAGES
    assert {1, 13} <= {b for s in data["sets"] for b in s["batch_sizes"]}
    assert data["summary"]["top1_flips"] == 0
    if dtype == "fp32":
        assert data["summary"]["min_top1_agreement"] == 1.0 and data["summary"]["max_abs_err"] < 1e-4
        assert data["accuracy"]["runner"] == data["accuracy"]["reference"]
    else:  # near-ties may swap (not flips): about 1 image in 500
        assert abs(data["accuracy"]["runner"] - data["accuracy"]["reference"]) <= 0.01
    # A trained model is far better than chance on the real test images.
    assert data["accuracy"]["reference"] > 0.5
    assert data["runner"].startswith("onnxruntime")
    assert data["checkpoint"]["weights_sha256"] == load_checkpoint(trained_checkpoint).sha256


@pytest.mark.slow
def test_card_round_trip(fashion_export, trained_checkpoint):
    """Checkpoint card + export section == card.json beside the model == the card inside the ONNX file."""
    result = fashion_export("plugin", "fp16")
    source = load_checkpoint(trained_checkpoint)
    inside = card_from_onnx(result.model_path)
    beside = ModelCard.load(result.model_path.with_name(CARD_FILE))
    assert inside == beside == result.card
    assert inside.model_dump(exclude={"export"}) == source.card.model_dump(exclude={"export"})
    e = inside.export
    assert (e.elu_mode, e.dtype, e.io_dtype, e.opset, e.parity) == ("plugin", "fp16", "fp32", 18, "passed")
    assert e.source_checkpoint_sha256 == source.sha256 and "dynamo" in e.exporter


@pytest.mark.slow
def test_verify_refuses_a_model_tampered_after_export(fashion_export, trained_checkpoint, tmp_path):
    """One weight changed in the ONNX file: `elunet verify` fails with exit code 1 and says so in parity.json."""
    proto = onnx.load(str(fashion_export("native", "fp32").model_path))
    init = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    weights = numpy_helper.to_array(init).copy()
    weights.flat[0] += 0.05
    init.CopyFrom(numpy_helper.from_array(weights, init.name))
    tampered = tmp_path / "model.onnx"
    onnx.save(proto, str(tampered))
    run = subprocess.run(
        [sys.executable, "-m", "elunet", "verify", str(tampered), "--checkpoint", str(trained_checkpoint), "--images", "64"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "parity FAILED" in run.stdout
    report = json.loads(target_certificate(tampered, RunsOn("onnxruntime", "cpu")).read_text())
    assert report["passed"] is False
    assert report["summary"]["needed_atol"] > 1e-4


@pytest.mark.slow
def test_verify_refuses_a_different_checkpoint(fashion_export, trained_checkpoint, tmp_path):
    """A model verified against weights it was not exported from is an error, not a comparison."""
    from elunet.train.checkpoint import save_checkpoint

    other = load_checkpoint(trained_checkpoint)
    first = next(other.model.parameters())
    first.data += 0.01
    save_checkpoint(tmp_path / "other", other.model, other.card)
    with pytest.raises(ElunetError, match="exported from weights with sha256"):
        verify_model(fashion_export("native", "fp32").model_path, load_checkpoint(tmp_path / "other"), images=16)


def test_parity_data_with_other_classes_than_the_models_is_refused(tmp_path):
    from PIL import Image

    from elunet.export.real_data import load_split
    from elunet.train.models import describe_model

    for name in ("a", "b"):  # synthetic images, one folder per class
        (tmp_path / name).mkdir()
        for i in range(10):
            Image.new("RGB", (8, 8), (i, i, i)).save(tmp_path / name / f"{i}.png")
    card = describe_model(name="m", architecture="fashion-cnn", activation="elu", alpha=None, batch_norm=False, dataset="imagefolder",
                          labels=["a", "c"], input_shape=(3, 8, 8), normalization="meanstd")
    with pytest.raises(ElunetError, match=r"has classes \['a', 'b'\]; the model was trained on \['a', 'c'\]"):
        load_split(card, "test", tmp_path, "parity")


def _copy_of(export, folder):
    """The exported model with its card and certificate, in a folder of the test's own."""
    for file in (export.model_path, side_file(export.model_path, CARD_FILE), side_file(export.model_path, PARITY_FILE)):
        shutil.copy(file, folder)
    return folder / export.model_path.name


def test_a_looser_tolerance_needs_a_mark_and_never_earns_a_serving_certificate(fashion_export, trained_checkpoint, tmp_path):
    with pytest.raises(ElunetError, match=r"--atol 10 \(default 0.0001\) is looser than what fp32 graphs are held to"):
        criteria("fp32", atol=10)
    with pytest.raises(ElunetError, match=r"--max-accuracy-drop 5 \(default 0.5\)"):
        criteria("int8", max_accuracy_drop=5)
    assert not criteria("fp32", atol=1e-6)[0].loosened  # tighter is always allowed
    model = _copy_of(fashion_export("native", "fp32"), tmp_path)
    report = verify_model(model, load_checkpoint(trained_checkpoint), tolerance=criteria("fp32", atol=10, loosen=True)[0], images=TEST_PARITY_IMAGES)
    assert report.passed and report.data["tolerance"]["loosened"] is True
    report.save(side_file(model, PARITY_FILE))
    assert "looser than the defaults" in certificate_problem(model, RunsOn("onnxruntime", "cpu"))


def test_a_failing_verify_never_replaces_a_passed_certificate(fashion_export, trained_checkpoint, tmp_path):
    model = _copy_of(fashion_export("native", "fp16"), tmp_path)
    exact = criteria("fp16", atol=0.0, rtol=0.0)[0]  # tighter than fp16 can be: fails
    report = verify_model(model, load_checkpoint(trained_checkpoint), tolerance=exact, images=64)
    assert not report.passed
    written = write_certificate(report, side_file(model, PARITY_FILE))
    assert written.name == "parity.failed.json" and json.loads(written.read_text())["passed"] is False
    assert certificate_problem(model, RunsOn("onnxruntime", "cpu")) is None, "the published certificate must still serve"
