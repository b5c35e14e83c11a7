"""From finished runs to the figures a report shows: curves, final errors, tests, learning speed, bias shift.

A run record (see runs.py) holds, besides its key, ``epochs``: one entry per
epoch with ``epoch``, ``train_loss``, ``test_error`` (fraction), ``train_seconds``
(cumulative) and ``mean_activation`` ({layer: mean unit activation}), and
``final_test_error``. The summary is plain JSON so that results.json alone is
enough to redraw every plot.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from elunet.train.experiments.paper import CIFAR100_TEST_ERROR_PERCENT, PAPER_ORDER, is_paper_setting
from elunet.train.experiments.runs import BN_SUFFIX, variant_name
from elunet.train.experiments.stats import default_loss_thresholds, epochs_to_threshold, paired_wilcoxon, spread

REFERENCE = "elu"  # every test compares ELU (without batch norm, as in the paper) with each other variant


def _by_variant(records: list[dict], variants: list[str]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r["seed"]):
        grouped[record["variant"]].append(record)
    return {v: grouped[v] for v in variants if grouped[v]}


def _mean_std_curve(rows: list[list[float]]) -> dict:
    """Mean and std per epoch over runs; runs of unequal length are cut to the shortest."""
    length = min(len(r) for r in rows)
    array = np.asarray([r[:length] for r in rows], dtype=float)
    std = array.std(axis=0, ddof=1) if len(rows) > 1 else np.zeros(length)
    return {"mean": array.mean(axis=0).tolist(), "std": std.tolist()}


def curves(runs: list[dict]) -> dict:
    """Per-epoch mean and spread over seeds of one variant's training loss, test error, time and mean activations."""
    epochs = [r["epochs"] for r in runs]
    layers = list(epochs[0][0]["mean_activation"]) if epochs[0] and epochs[0][0].get("mean_activation") else []
    return {
        "epoch": [e["epoch"] for e in epochs[0][: min(len(x) for x in epochs)]],
        "train_loss": _mean_std_curve([[e["train_loss"] for e in x] for x in epochs]),
        "test_error": _mean_std_curve([[e["test_error"] for e in x] for x in epochs]),
        "train_seconds": _mean_std_curve([[e["train_seconds"] for e in x] for x in epochs]),
        "mean_activation": {layer: _mean_std_curve([[e["mean_activation"][layer] for e in x] for x in epochs]) for layer in layers},
    }


def learning_speed(grouped: dict[str, list[dict]], threshold: float) -> dict:
    """Per variant: how many runs reached the training-loss threshold, and in how many epochs / seconds."""
    speed = {}
    for variant, runs in grouped.items():
        hits = [
            epochs_to_threshold([e["train_loss"] for e in r["epochs"]], [e["train_seconds"] for e in r["epochs"]], threshold)
            for r in runs
        ]
        reached = [h for h in hits if h is not None]
        speed[variant] = {
            "runs": len(runs),
            "reached": len(reached),
            "epochs": spread([h[0] for h in reached]).as_dict() if reached else None,
            "seconds": spread([h[1] for h in reached]).as_dict() if reached else None,
        }
    return speed


def ordering(final: dict[str, dict]) -> dict:
    """The measured ranking of the paper's four activations (without batch norm) against the paper's."""
    present = [a for a in PAPER_ORDER if a in final]
    measured = sorted(present, key=lambda v: final[v]["mean"])
    return {
        "paper": list(present),
        "measured": measured,
        "elu_best": bool(measured) and measured[0] == REFERENCE,
        "matches_paper": measured == present,
    }


def batch_norm_effect(grouped: dict[str, list[dict]]) -> list[dict]:
    """For each activation trained both ways: its batch-norm variant (the reference) against it, paired by seed."""
    errors = {v: {r["seed"]: r["final_test_error"] for r in runs} for v, runs in grouped.items()}
    effects = []
    for activation in errors:
        with_bn = variant_name(activation, True)
        if not activation.endswith(BN_SUFFIX) and with_bn in errors:
            effects.append(paired_wilcoxon(errors[with_bn], errors[activation], activation).as_dict())
    return effects


def summarize(records: list[dict], variants: list[str], settings: dict, loss_threshold: float | None = None) -> dict:
    """Everything the report and plots need, from the finished run records."""
    grouped = _by_variant(records, variants)
    curve = {v: curves(runs) for v, runs in grouped.items()}
    final = {v: spread([r["final_test_error"] for r in runs]).as_dict() for v, runs in grouped.items()}
    tests = []
    if REFERENCE in grouped:
        reference = {r["seed"]: r["final_test_error"] for r in grouped[REFERENCE]}
        for variant, runs in grouped.items():
            if variant != REFERENCE:
                tests.append(paired_wilcoxon(reference, {r["seed"]: r["final_test_error"] for r in runs}, variant).as_dict())
    thresholds = [loss_threshold] if loss_threshold is not None else default_loss_thresholds({v: c["train_loss"]["mean"] for v, c in curve.items()})
    final_activation = {
        v: {layer: c["mean_activation"][layer]["mean"][-1] for layer in c["mean_activation"]} for v, c in curve.items()
    }
    paper = None
    if is_paper_setting(settings.get("dataset", ""), settings.get("arch", "")):
        paper = {a: {"mean": m, "std": s} for a, (m, s) in CIFAR100_TEST_ERROR_PERCENT.items()}
    return {
        "variants": list(grouped),
        "seeds": {v: [r["seed"] for r in runs] for v, runs in grouped.items()},
        "curves": curve,
        "final_test_error": final,
        "runs_final_test_error": {v: [r["final_test_error"] for r in runs] for v, runs in grouped.items()},
        "wilcoxon_vs_elu": tests,
        "batch_norm_effect": batch_norm_effect(grouped),
        "loss_thresholds": thresholds,
        "learning_speed": [{"threshold": t, "variants": learning_speed(grouped, t)} for t in thresholds],
        "final_mean_activation": final_activation,
        "mean_abs_final_activation": {
            v: float(np.mean([abs(x) for x in layers.values()])) if layers else None for v, layers in final_activation.items()
        },
        "ordering": ordering(final),
        "paper_cifar100_test_error_percent": paper,
    }
