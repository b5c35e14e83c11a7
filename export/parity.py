"""Parity: the inputs `elunet verify` feeds, and the comparator that judges the outputs.

Inputs (all float32 pixels, NCHW, the card's shape):
- real test-set images of the model's dataset, fed in batches of ``batch_size``
  (the last batch is usually smaller), plus batch sizes 1 and 13;
- stress inputs outside the [0, 1] range the model was trained on, which push
  the numerics where they differ most: large magnitudes (images x STRESS_SCALE),
  the ELU's negative saturation region (images x -STRESS_SCALE), exact zeros,
  and all-ones images.

Comparator, per input set and output (Polygraphy's element-wise rule): an
element fails only when its absolute error exceeds ``atol`` AND its relative
error exceeds ``rtol``, i.e. when it moved more than max(atol, rtol x |reference|).
Reported, as Polygraphy's comparator does: max, mean, median, 90th and 99th
percentile of the absolute and of the relative error, and the index of the
worst element; the atol that would have been needed at the given rtol (and
the rtol needed at the given atol); top-1 agreement. A set passes when no
element fails, no output is NaN/inf where the reference is finite, and its
top-1 agreement, counting only flips, reaches ``min_top1``.

A flip is a top-1 disagreement the tolerance cannot explain: the reference's
margin between its top class and the runner's exceeds what the two logits
may each move. A near-tie swapped by rounding (fp16 swaps the two best
classes of about 1 in 500 fashion-cnn test images) is within tolerance,
counted as such but not as a flip; so float graphs are held to 100 %, and a
one-image set no longer passes or fails whole on a near-tie.

int8 graphs are judged by an accuracy gate (elunet.card.AccuracyGate), not
element-wise: on the whole test split, their test accuracy may fall at most
``max_accuracy_drop_points`` below the float32 reference's, and their top-1
class must agree with the reference's on ``min_top1_agreement`` of the images.
Their element-wise figures are recorded with unbounded atol/rtol: only a
NaN/inf where the reference is finite fails a set.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from elunet.card import AccuracyGate, ModelCard
from elunet.contracts import OUTPUT_NAME
from elunet.errors import ElunetError

# Defaults per graph dtype (atol, rtol, min top-1 agreement): fp32 is held to
# float32 rounding, fp16 to half precision (see the module docstring for top-1).
ERROR_PERCENTILES = (90, 99)
DEFAULT_TOLERANCES = {"fp32": (1e-4, 1e-4, 1.0), "fp16": (1e-2, 1e-2, 1.0), "int8": (math.inf, math.inf, 0.0)}
# The dtypes judged by accuracy on the whole test split, and their default gates (the issue's:
# at most half a point of accuracy lost, 99 % of the top-1 classes kept).
DEFAULT_ACCURACY_GATES = {"int8": AccuracyGate(max_accuracy_drop_points=0.5, min_top1_agreement=0.99)}
DEFAULT_IMAGES = 512
DEFAULT_BATCH = 64
ODD_BATCH = 13
STRESS_SCALE = 8.0
STRESS_IMAGES = 7


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    min_top1: float = 1.0
    loosened: bool = False  # looser than the dtype's defaults: a certificate earned with it serves nothing

    @classmethod
    def for_dtype(cls, dtype: str, atol: float | None = None, rtol: float | None = None, min_top1: float | None = None) -> "Tolerance":
        d_atol, d_rtol, d_top1 = DEFAULT_TOLERANCES[dtype]
        return cls(
            atol=d_atol if atol is None else atol,
            rtol=d_rtol if rtol is None else rtol,
            min_top1=d_top1 if min_top1 is None else min_top1,
        )


def criteria(
    dtype: str, *, atol: float | None = None, rtol: float | None = None, min_top1: float | None = None, max_accuracy_drop: float | None = None,
    loosen: bool = False,
) -> tuple[Tolerance, AccuracyGate | None]:
    """What a graph of ``dtype`` is held to: element-wise tolerances, and for int8 the accuracy gate.

    ``min_top1`` is the required top-1 agreement: per input set for fp32/fp16, on the whole
    test split for int8. ``max_accuracy_drop`` (percentage points) is int8's only.

    The defaults are also the ceiling: anything looser is refused unless ``loosen``, and then
    marked (``Tolerance.loosened``), so that `verify --atol 10` cannot earn a certificate that serves.
    """
    gate = DEFAULT_ACCURACY_GATES.get(dtype)
    if gate is None:
        if max_accuracy_drop is not None:
            raise ElunetError(
                f"--max-accuracy-drop judges int8 graphs; this one is {dtype}",
                hint="fp32 and fp16 graphs are held to --atol, --rtol and --min-top1",
            )
        default, asked = Tolerance.for_dtype(dtype), Tolerance.for_dtype(dtype, atol, rtol, min_top1)
        looser = [f"--{k.replace('_', '-')} {getattr(asked, k):g} (default {getattr(default, k):g})" for k in ("atol", "rtol") if getattr(asked, k) > getattr(default, k)]
        looser += [f"--min-top1 {asked.min_top1:g} (default {default.min_top1:g})"] if asked.min_top1 < default.min_top1 else []
        return dataclasses.replace(asked, loosened=_allow_looser(dtype, looser, loosen)), None
    if atol is not None or rtol is not None:
        raise ElunetError(
            f"{dtype} graphs are judged by accuracy on the whole test split, not element-wise: --atol/--rtol do not apply",
            hint="use --max-accuracy-drop POINTS and --min-top1 FRACTION",
        )
    overrides = {"max_accuracy_drop_points": max_accuracy_drop, "min_top1_agreement": min_top1}
    asked = AccuracyGate.model_validate({**gate.model_dump(), **{k: v for k, v in overrides.items() if v is not None}})
    looser = [f"--max-accuracy-drop {asked.max_accuracy_drop_points:g} (default {gate.max_accuracy_drop_points:g})"] if asked.max_accuracy_drop_points > gate.max_accuracy_drop_points else []
    looser += [f"--min-top1 {asked.min_top1_agreement:g} (default {gate.min_top1_agreement:g})"] if asked.min_top1_agreement < gate.min_top1_agreement else []
    return dataclasses.replace(Tolerance.for_dtype(dtype), loosened=_allow_looser(dtype, looser, loosen)), asked


def _allow_looser(dtype: str, looser: list[str], loosen: bool) -> bool:
    """Whether the criteria are loosened; refuses it unless asked for explicitly."""
    if looser and not loosen:
        raise ElunetError(
            f"{', '.join(looser)} is looser than what {dtype} graphs are held to, and a certificate earned with it would vouch for less than serving assumes",
            hint="keep the defaults (or tighter), or add --loosened to measure anyway: that certificate is marked loosened and is never accepted for serving or publishing",
        )
    return bool(looser)


def judge_accuracy(gate: AccuracyGate, targets: np.ndarray, reference: np.ndarray, actual: np.ndarray) -> dict:
    """The gate's verdict on logits of the whole test split: the certificate's ``accuracy_gate``."""
    ref_top, act_top = np.argmax(reference, 1), np.argmax(actual, 1)
    n = len(targets)
    ref_correct, act_correct = int(np.sum(ref_top == targets)), int(np.sum(act_top == targets))
    drop = 100.0 * (ref_correct - act_correct) / n
    agreement = float(np.mean(ref_top == act_top))
    return {
        **gate.model_dump(),
        "images": n,
        "reference_accuracy": ref_correct / n,
        "runner_accuracy": act_correct / n,
        "accuracy_drop_points": drop,
        "top1_agreement": agreement,
        "passed": drop <= gate.max_accuracy_drop_points and agreement >= gate.min_top1_agreement,
    }


@dataclass(frozen=True)
class InputSet:
    name: str
    description: str
    batches: list[np.ndarray]


@dataclass
class OutputParity:
    abs_err: dict[str, float]  # error_stats of the absolute error
    rel_err: dict[str, float]  # error_stats of the relative error
    worst_index: list[int]  # where the absolute error is largest
    needed_atol: float  # the smallest atol that passes every element at the given rtol
    needed_rtol: float  # the smallest rtol that passes every element at the given atol
    failed_elements: int
    nonfinite_mismatches: int
    top1_agreement: float  # fraction of rows whose top-1 class is the reference's
    top1_flips: int  # disagreements beyond tolerance (see the module docstring); near-ties are not flips
    passed: bool

    @property
    def max_abs_err(self) -> float:
        return self.abs_err["max"]

    @property
    def max_rel_err(self) -> float:
        return self.rel_err["max"]


def error_stats(err: np.ndarray) -> dict[str, float]:
    """max, mean, median and percentiles of an error array (percentiles without interpolation: inf stays inf)."""
    if not err.size:
        return dict.fromkeys(["max", "mean", "median", *(f"p{q}" for q in ERROR_PERCENTILES)], 0.0)
    return {
        "max": float(err.max()),
        "mean": float(err.mean()),
        "median": float(np.percentile(err, 50, method="higher")),
        **{f"p{q}": float(np.percentile(err, q, method="higher")) for q in ERROR_PERCENTILES},
    }


def top1_flips(ref: np.ndarray, act: np.ndarray, tol: Tolerance) -> tuple[float, int]:
    """(top-1 agreement, flips) of logits [N, classes]; a flip is a disagreement where the reference's
    margin between its top class and the runner's exceeds max(atol, rtol x |logit|) of both logits."""
    if ref.ndim != 2 or not len(ref):
        return 1.0, 0
    rows = np.arange(len(ref))
    ref_top, act_top = np.argmax(ref, 1), np.argmax(act, 1)
    best, chosen = ref[rows, ref_top], ref[rows, act_top]
    with np.errstate(invalid="ignore"):  # inf tolerances (int8): every disagreement is within them
        may_move = np.maximum(tol.atol, tol.rtol * np.abs(best)) + np.maximum(tol.atol, tol.rtol * np.abs(chosen))
        flips = (ref_top != act_top) & (best - chosen > may_move)
    return float(np.mean(ref_top == act_top)), int(flips.sum())


@dataclass
class SetParity:
    name: str
    description: str
    images: int
    batch_sizes: list[int]
    outputs: dict[str, OutputParity] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs.values())


def parity_inputs(card: ModelCard, test_pixels: np.ndarray, batch_size: int = DEFAULT_BATCH) -> list[InputSet]:
    """The input sets for a model with ``card``, from real test images [N, C, H, W] float32 in [0, 1]."""
    if test_pixels.shape[1:] != card.input_shape:
        raise ElunetError(
            f"test images are {tuple(test_pixels.shape[1:])}, the model takes {card.input_shape}",
            hint="verify with the dataset the model was trained on (the card says {card.dataset!r})",
        )
    if len(test_pixels) < ODD_BATCH:
        raise ElunetError(f"verify needs at least {ODD_BATCH} test images, got {len(test_pixels)}", hint="raise --images")
    stress = test_pixels[:STRESS_IMAGES]
    shape = (STRESS_IMAGES, *card.input_shape)
    return [
        InputSet("test-images", f"{len(test_pixels)} {card.dataset} test images, batches of {batch_size}", _split(test_pixels, batch_size)),
        InputSet("batch-1", "one test image", [test_pixels[:1]]),
        InputSet(f"batch-{ODD_BATCH}", f"an odd batch of {ODD_BATCH} test images", [test_pixels[:ODD_BATCH]]),
        InputSet("large-magnitude", f"test images x {STRESS_SCALE:g} (pixels far above the [0, 1] range)", [stress * STRESS_SCALE]),
        InputSet("negative-saturation", f"test images x -{STRESS_SCALE:g} (drives ELUs into saturation at -alpha)", [stress * -STRESS_SCALE]),
        InputSet("zeros", "exact zeros", [np.zeros(shape, np.float32)]),
        InputSet("ones", "all-ones images (the top of the range)", [np.ones(shape, np.float32)]),
    ]


def _split(pixels: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [pixels[i : i + batch_size] for i in range(0, len(pixels), batch_size)]


def compare(reference: np.ndarray, actual: np.ndarray, tol: Tolerance) -> OutputParity:
    """Judge one output of one input set."""
    if reference.shape != actual.shape:
        raise ElunetError(f"output shapes differ: reference {reference.shape}, runner {actual.shape}", hint="the model and the checkpoint describe different networks")
    ref = reference.astype(np.float64)
    act = actual.astype(np.float64)
    both_finite = np.isfinite(ref) & np.isfinite(act)
    # NaN vs NaN and inf vs the same inf agree; anything else non-finite is a mismatch.
    same_special = ~both_finite & ((np.isnan(ref) & np.isnan(act)) | (ref == act))
    nonfinite = int(np.sum(~both_finite & ~same_special))
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite elements are counted above, not here
        err = np.where(both_finite, np.abs(act - ref), 0.0)
    mag = np.abs(np.where(both_finite, ref, 0.0))
    rel = np.divide(err, mag, out=np.where(err > 0, np.inf, 0.0), where=mag > 0)
    failing = (err > tol.atol) & (rel > tol.rtol)
    agreement, flips = top1_flips(ref, act, tol)
    abs_stats, rel_stats = error_stats(err), error_stats(rel)
    if nonfinite:
        abs_stats["max"] = rel_stats["max"] = math.inf
    return OutputParity(
        abs_err=abs_stats,
        rel_err=rel_stats,
        worst_index=[int(i) for i in np.unravel_index(np.argmax(err), err.shape)] if err.size else [],
        needed_atol=float(np.where(rel > tol.rtol, err, 0.0).max(initial=0.0)) if not nonfinite else math.inf,
        needed_rtol=float(np.where(err > tol.atol, rel, 0.0).max(initial=0.0)) if not nonfinite else math.inf,
        failed_elements=int(failing.sum()),
        nonfinite_mismatches=nonfinite,
        top1_agreement=agreement,
        top1_flips=flips,
        passed=not nonfinite and not failing.any() and 1 - flips / max(1, len(ref)) >= tol.min_top1,
    )


def run_set(reference, runner, inputs: InputSet, tol: Tolerance, progress=lambda images: None) -> tuple[SetParity, np.ndarray, np.ndarray]:
    """Feed one input set to both runners and compare; returns the result and both logits.

    ``progress(n)`` is called after each batch of n images has run through both.
    """
    ref_batches, act_batches = [], []
    for batch in inputs.batches:
        ref_batches.append(reference.infer(batch))
        act_batches.append(runner.infer(batch))
        progress(len(batch))
    ref, act = np.concatenate(ref_batches), np.concatenate(act_batches)
    result = SetParity(inputs.name, inputs.description, len(ref), [len(b) for b in inputs.batches])
    result.outputs[OUTPUT_NAME] = compare(ref, act, tol)
    return result, ref, act


def finite_or_text(value: float) -> float | str:
    """JSON has no inf/nan: write them as strings."""
    return value if math.isfinite(value) else str(value)


def set_to_json(result: SetParity) -> dict:
    data = asdict(result)
    data["passed"] = result.passed
    for out in data["outputs"].values():
        for key, value in out.items():
            if isinstance(value, float):
                out[key] = finite_or_text(value)
            elif key in ("abs_err", "rel_err"):
                out[key] = {k: finite_or_text(v) for k, v in value.items()}
    return data
