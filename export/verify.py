"""`elunet verify`: compare an exported model with the checkpoint it came from.

The PyTorch network of the checkpoint is the reference; the model under test
runs on the engine that serves it (elunet.runtime: ONNX Runtime, or TensorRT),
opened exactly as `elunet serve` opens it, so the code that earns the
certificate is the code that serves. Both see the same inputs (parity.py). The result is a parity
certificate, ``parity.json``; what it binds, and why, is elunet/certificate.py's
docstring. A failing run never replaces a passed certificate (write_certificate).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from elunet.card import AccuracyGate, ModelCard
from elunet.certificate import RunsOn, serving_digests
from elunet.files import sha256_file, write_atomic
from elunet.contracts import OUTPUT_NAME
from elunet.errors import ElunetError
from elunet.export.real_data import real_test_pixels
from elunet.export.parity import DEFAULT_BATCH, DEFAULT_IMAGES, Tolerance, criteria, finite_or_text, judge_accuracy, parity_inputs, run_set, set_to_json
from elunet.runtime import open_engine

# What `elunet verify` (and `elunet export` before publishing) runs the model under test on.
DEFAULT_BACKEND = "onnxruntime"
BACKENDS = (DEFAULT_BACKEND, "tensorrt")
DEVICES = ("auto", "cpu", "cuda")

PARITY_FORMAT = 2


@dataclass
class ParityReport:
    data: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.data["passed"])

    @property
    def model_sha256(self) -> str:
        return self.data["model"]["sha256"]

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2)

    def save(self, path: Path) -> None:
        write_atomic(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: Path) -> "ParityReport":
        try:
            return cls(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ElunetError(f"cannot read the parity certificate {path}: {exc}", hint="run `elunet verify` again") from None

    def lines(self) -> list[str]:
        """A human summary: what the columns mean, one line per input set, then the verdict."""
        d = self.data
        tol, gate = d["tolerance"], d.get("accuracy_gate")
        if gate is None:
            out = [
                f"parity: {d['runner']} vs {d['reference']}  (atol {_fmt(tol['atol'])}, rtol {_fmt(tol['rtol'])}, top-1 >= {tol['min_top1']:.0%})",
                f"  {tol['rule']}; rel err = abs err / |reference|: large where a reference logit is near 0, undefined (inf) where it is 0; "
                "top-1 disagreements within tolerance (near-ties) are not flips",
                "  atol needed: the smallest atol that passes every element at this rtol (0: rtol alone passes them all)",
            ]
        else:
            out = [f"parity: {d['runner']} vs {d['reference']}  ({d['model'].get('dtype')}: judged by accuracy on the whole test split; "
                   "element-wise figures for the record)"]
        for s in d["sets"]:
            o = s["outputs"][OUTPUT_NAME]
            mark = "ok  " if s["passed"] else "FAIL"
            needed = f"atol needed {_fmt(o['needed_atol'])}  " if gate is None else ""  # int8 sets have no atol to need
            out.append(
                f"  {mark} {s['name']:<20} n={s['images']:<5} abs err max {_fmt(o['abs_err']['max'])} at {o['worst_index']} "
                f"(median {_fmt(o['abs_err']['median'])}, p99 {_fmt(o['abs_err']['p99'])})  rel err max {_fmt(o['rel_err']['max'])} "
                f"(p99 {_fmt(o['rel_err']['p99'])})  {needed}top-1 {o['top1_agreement']:.2%} ({o['top1_flips']} beyond tolerance)"
            )
        acc = d.get("accuracy")
        if acc:
            out.append(f"  test accuracy on {acc['images']} images: reference {acc['reference']:.4f}, {d['backend']} {acc['runner']:.4f}")
        if gate is not None:
            out.append(f"  {'ok  ' if gate['passed'] else 'FAIL'} accuracy gate: {_gate_figures(gate)}")
        out.append(f"parity {'PASSED' if self.passed else 'FAILED'}: max abs err {_fmt(d['summary']['max_abs_err'])} over all inputs")
        return out


    def gate_failure(self) -> ElunetError | None:
        """The error for a failed accuracy gate: the figures, and what to change (None unless it failed)."""
        gate = self.data.get("accuracy_gate")
        if gate is None or gate["passed"]:
            return None
        return ElunetError(
            f"the {self.data['model'].get('dtype')} model failed its accuracy gate, so nothing was written: {_gate_figures(gate)}",
            hint="calibrate on more images (--calibration-images, e.g. 2048), try another --calibration-method "
            "(minmax, entropy, percentile), or keep this model in fp32 (--dtype fp32); "
            "the gate (--max-accuracy-drop, --min-top1) may only be tightened",
        )


def write_certificate(report: ParityReport, path: Path) -> Path:
    """Write ``report`` to ``path``; returns where it went.

    A failed report never replaces a passed certificate: one failing run (another machine, a
    tighter tolerance) must not take a published model down. It goes beside it, as <stem>.failed.json.
    """
    path = Path(path)
    if not report.passed and path.is_file():
        try:
            holds_a_pass = ParityReport.load(path).passed
        except (ElunetError, KeyError, TypeError):
            holds_a_pass = False
        if holds_a_pass:
            path = path.with_name(f"{path.stem}.failed{path.suffix}")
    report.save(path)
    return path


def _gate_figures(gate: dict) -> str:
    return (
        f"on {gate['images']} test images, accuracy {gate['runner_accuracy']:.2%} vs float32 {gate['reference_accuracy']:.2%} "
        f"({gate['accuracy_drop_points']:.2f} points lost, at most {gate['max_accuracy_drop_points']:g} allowed), "
        f"top-1 agreement {gate['top1_agreement']:.2%} (at least {gate['min_top1_agreement']:.2%} required)"
    )


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def verify_model(
    model_path: Path,
    checkpoint,
    *,
    backend: str = DEFAULT_BACKEND,
    device: str = "auto",
    tolerance: Tolerance | None = None,
    accuracy_gate: AccuracyGate | None = None,
    images: int = DEFAULT_IMAGES,
    batch_size: int = DEFAULT_BATCH,
    data_dir: Path | None = None,
    model_card: ModelCard | None = None,
) -> ParityReport:
    """Run the reference and the runner under test on the parity inputs; returns the certificate.

    ``checkpoint`` is a LoadedCheckpoint (elunet.train.checkpoint). ``model_card``
    is the card inside the model (read from the file when not given). Defaults:
    parity.criteria for the model's dtype. A dtype with an accuracy gate (int8)
    runs on the whole test split, whatever ``images`` says.
    """
    from tqdm import tqdm

    from elunet.export.card_metadata import card_from_onnx

    model_path = Path(model_path)
    card = model_card or card_from_onnx(model_path)
    _check_same_model(card, checkpoint)
    dtype = card.export.dtype if card.export else "fp32"
    default_tol, default_gate = criteria(dtype)
    tol = tolerance or default_tol
    gate = (accuracy_gate or default_gate) if default_gate else None  # only the gated dtypes (int8) have one
    pixels, targets = real_test_pixels(checkpoint.card, None if gate else images, data_dir, "the accuracy gate" if gate else "parity")
    sets = parity_inputs(checkpoint.card, pixels, batch_size)
    largest = max(len(b) for s in sets for b in s.batches)
    results = []
    total = sum(len(b) for s in sets for b in s.batches)
    with open_engine("torch", checkpoint.path, device="cpu") as reference_engine, open_engine(
        backend, model_path, device=device, max_batch_size=largest
    ) as engine, tqdm(total=total, desc="verify", unit="image", disable=not sys.stderr.isatty(), leave=False) as bar:
        reference, runner = reference_engine.create_instance(), engine.create_instance()
        for inputs in sets:
            result, ref, act = run_set(reference, runner, inputs, tol, progress=bar.update)
            results.append(result)
            if inputs is sets[0]:  # the real test images: parity in the units users care about
                accuracy = {
                    "images": int(len(targets)),
                    "reference": float(np.mean(np.argmax(ref, 1) == targets)),
                    "runner": float(np.mean(np.argmax(act, 1) == targets)),
                }
                verdict = judge_accuracy(gate, targets, ref, act) if gate else None
        runner_name, runs_on = runner.name, RunsOn.of(backend, engine.device)
    outputs = [o for r in results for o in r.outputs.values()]
    data = {
        "format": PARITY_FORMAT,
        "passed": all(r.passed for r in results) and (verdict is None or verdict["passed"]),
        "model": {
            "file": model_path.name,  # parity.json lives beside the model it certifies
            "sha256": sha256_file(model_path),
            "name": card.name,
            "version": card.version,
            **({"elu_mode": card.export.elu_mode, "dtype": card.export.dtype, "opset": card.export.opset} if card.export else {}),
        },
        "checkpoint": {"path": str(checkpoint.path), "weights_sha256": checkpoint.sha256},
        "backend": backend,
        "runs_on": {"backend": runs_on.backend, "device": runs_on.device},
        "runner": runner_name,
        "reference": reference.name,
        "tolerance": {
            "atol": finite_or_text(tol.atol),
            "rtol": finite_or_text(tol.rtol),
            "min_top1": tol.min_top1,
            "loosened": tol.loosened,
            "rule": "an element fails when abs err > atol and rel err > rtol",
        },
        "serves_with": serving_digests(card),
        "summary": {
            key: finite_or_text(max(getattr(o, key) for o in outputs))
            for key in ("max_abs_err", "max_rel_err", "needed_atol", "needed_rtol")
        }
        | {"min_top1_agreement": min(o.top1_agreement for o in outputs), "top1_flips": sum(o.top1_flips for o in outputs)},
        "accuracy": accuracy,
        **({"accuracy_gate": verdict} if verdict else {}),
        "sets": [set_to_json(r) for r in results],
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return ParityReport(data)


def _check_same_model(card: ModelCard, checkpoint) -> None:
    """The ONNX file must have been exported from exactly this checkpoint."""
    source = card.export.source_checkpoint_sha256 if card.export else None
    if source is not None and source != checkpoint.sha256:
        raise ElunetError(
            f"the model was exported from weights with sha256 {source[:12]}..., "
            f"but {checkpoint.path} holds weights {checkpoint.sha256[:12]}...",
            hint="verify against the checkpoint the model was exported from (its card.json names the sha256)",
        )
    if card.input_shape != checkpoint.card.input_shape or card.labels != checkpoint.card.labels:
        raise ElunetError(
            f"the model takes {card.input_shape} with {card.num_classes} labels, "
            f"the checkpoint {checkpoint.card.input_shape} with {checkpoint.card.num_classes}",
            hint="verify a model against the checkpoint it was exported from",
        )
