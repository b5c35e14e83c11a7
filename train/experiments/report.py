"""report.md: the measured figures, what the paper claims, and whether the claim held here."""

from __future__ import annotations

from pathlib import Path

from elunet.files import write_atomic
from elunet.train.data import IMAGEFOLDER
from elunet.train.experiments.plots import BIAS_SHIFT_PNG, CURVES_PNG, SPEED_PNG
from elunet.train.experiments.runs import variant_name
from elunet.train.experiments.stats import smallest_exact_p
from elunet.train.experiments.summary import REFERENCE

REPORT_FILE = "report.md"
SIGNIFICANCE = 0.05


def _pm(spread: dict | None, scale: float = 1.0, digits: int = 2) -> str:
    if spread is None:
        return "–"
    mean = spread["mean"] * scale
    if spread["std"] is None:
        return f"{mean:.{digits}f} (n=1)"
    return f"{mean:.{digits}f} ± {spread['std'] * scale:.{digits}f}"


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


# Settings that only mean something for --dataset imagefolder.
IMAGEFOLDER_ONLY = ("image_size", "channels")


def _settings_table(settings: dict) -> list[str]:
    """The recipe, without unset options and without the image-folder ones for other datasets."""
    shown = {k: v for k, v in settings.items() if v is not None and (settings.get("dataset") == IMAGEFOLDER or k not in IMAGEFOLDER_ONLY)}
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(shown.items())]
    return lines


def _error_table(summary: dict) -> list[str]:
    paper = summary.get("paper_cifar100_test_error_percent")
    tests = {t["other"]: t for t in summary["wilcoxon_vs_elu"]}
    header = "| variant | runs | test error (%) mean ± std | min – max (%) |"
    rule = "|---|---|---|---|"
    if paper:
        header += " paper, CIFAR-100 (%) |"
        rule += "---|"
    header += " ELU lower / higher / tied | mean Δ ELU − variant (pp) | Wilcoxon p (two-sided) |"
    rule += "---|---|---|"
    lines = [header, rule]
    for variant, final in summary["final_test_error"].items():
        errors = summary["runs_final_test_error"][variant]
        row = f"| {variant} | {final['n']} | {_pm(final, 100)} | {min(errors) * 100:.2f} – {max(errors) * 100:.2f} |"
        if paper:
            row += f" {_pm(paper.get(variant), digits=2)} |" if variant in paper else " – |"
        test = tests.get(variant)
        if test is None:
            row += " (reference) | – | – |"
        else:
            delta = "–" if test["mean_difference"] is None else f"{test['mean_difference'] * 100:+.2f}"
            row += f" {test['reference_lower']} / {test['reference_higher']} / {test['ties']} | {delta} | {_p(test['p_value'])} |"
        lines.append(row)
    return lines


def _verdict(summary: dict) -> list[str]:
    order = summary["ordering"]
    lines = []
    if len(order["paper"]) >= 2:
        measured = " < ".join(order["measured"])
        paper = " < ".join(order["paper"])
        held = "held" if order["matches_paper"] else "did not hold"
        lines.append(f"- Ranking by mean test error (lower is better): measured **{measured}**; paper {paper}. "
                     f"The paper's ordering **{held}**; ELU was {'the best' if order['elu_best'] else 'not the best'} of them.")
    tests = summary["wilcoxon_vs_elu"]
    if tests:
        n_pairs = max(t["n_pairs"] for t in tests)
        floor = smallest_exact_p(n_pairs)
        significant = [
            f"{t['other']} (ELU {'better' if t['mean_difference'] < 0 else 'worse'})"
            for t in tests
            if t["p_value"] is not None and t["p_value"] < SIGNIFICANCE
        ]
        lines.append(
            f"- Strength: with {n_pairs} paired seeds the exact two-sided Wilcoxon signed-rank test cannot give p below "
            f"2/2^{n_pairs} = {floor:.4f} (all seeds agreeing)"
            + (f", so p < {SIGNIFICANCE} is out of reach with this many seeds; read the p-values as the consistency "
               f"of the sign across seeds, and add seeds (the paper used 10) for a decisive test." if floor >= SIGNIFICANCE else ".")
        )
        if floor < SIGNIFICANCE:
            lines.append(f"- Differences significant at p < {SIGNIFICANCE}: " + (", ".join(significant) if significant else "none") + ".")
        for t in tests:
            if t["mean_difference"] is None:
                continue
            direction = "lower" if t["mean_difference"] < 0 else "higher"
            lines.append(
                f"  - ELU vs {t['other']}: ELU's error was {direction} by {abs(t['mean_difference']) * 100:.2f} pp on average; "
                f"lower in {t['reference_lower']} of {t['n_pairs']} seeds, higher in {t['reference_higher']}, tied in {t['ties']}; "
                f"p = {_p(t['p_value'])} ({t['method']})."
            )
    return lines


def _batch_norm_section(summary: dict) -> list[str]:
    """The paper: batch norm helped ReLU and LReLU, not ELU or SReLU; ELU without it beat ReLU with it."""
    effects = summary["batch_norm_effect"]
    if not effects:
        return []
    final = summary["final_test_error"]
    lines = [
        "## Batch norm",
        "",
        "The paper: batch norm helped ReLU and leaky ReLU but not ELU or SReLU, and ELU without batch norm beat ReLU "
        "with it. Each activation with batch norm against itself without, paired by seed:",
        "",
        "| activation | without BN (%) | with BN (%) | BN lower / higher / tied | mean Δ with − without (pp) | Wilcoxon p |",
        "|---|---|---|---|---|---|",
    ]
    for t in effects:
        with_bn = variant_name(t["other"], True)
        lines.append(
            f"| {t['other']} | {_pm(final[t['other']], 100)} | {_pm(final[with_bn], 100)} | "
            f"{t['reference_lower']} / {t['reference_higher']} / {t['ties']} | {t['mean_difference'] * 100:+.2f} | {_p(t['p_value'])} |"
        )
    helped = [t["other"] for t in effects if t["mean_difference"] < 0]
    lines += ["", f"- Batch norm lowered the mean error of: {', '.join(helped) if helped else 'none'}."]
    versus = next((t for t in summary["wilcoxon_vs_elu"] if t["other"] == variant_name("relu", True)), None)
    if versus is not None:
        verdict = "beat" if versus["mean_difference"] < 0 else "did not beat"
        lines.append(
            f"- ELU without batch norm {verdict} ReLU with it ({_pm(final[REFERENCE], 100)} % vs "
            f"{_pm(final[versus['other']], 100)} %, lower in {versus['reference_lower']} of {versus['n_pairs']} seeds, "
            f"p = {_p(versus['p_value'])})."
        )
    return lines + [""]


def _speed_table(summary: dict) -> list[str]:
    lines = [
        "Epochs (and training seconds) until a run's epoch-mean training loss first reaches a threshold. Unless "
        "--loss-threshold is given there are two: late, the highest final mean training loss of the variants "
        "(every variant's mean curve gets there; the slowest at its last epoch), and early, the geometric midpoint "
        "between that and the lowest first-epoch mean loss. Seconds are the training time until the end of that "
        "epoch, evaluation excluded; they are wall-clock and move with the machine's load, epochs do not.",
        "",
        "| variant | threshold | runs that reached it | epochs mean ± std | seconds mean ± std |",
        "|---|---|---|---|---|",
    ]
    for entry in summary["learning_speed"]:
        for variant, speed in entry["variants"].items():
            lines.append(
                f"| {variant} | {entry['threshold']:.4f} | {speed['reached']} / {speed['runs']} | "
                f"{_pm(speed['epochs'], digits=1)} | {_pm(speed['seconds'], digits=1)} |"
            )
    return lines


def _bias_shift_table(summary: dict) -> list[str]:
    finals = summary["final_mean_activation"]
    layers = next((list(v) for v in finals.values() if v), [])
    if not layers:
        return ["No mean activations were recorded."]
    lines = [
        "Mean activation of each layer's units after the last epoch (mean over seeds), and the mean of their "
        "absolute values: ELU's negative values are meant to keep these closer to zero (less bias shift).",
        "",
        "| variant | " + " | ".join(layers) + " | mean abs |",
        "|---|" + "---|" * (len(layers) + 1),
    ]
    for variant, values in finals.items():
        cells = " | ".join(f"{values[layer]:+.3f}" for layer in layers)
        lines.append(f"| {variant} | {cells} | {summary['mean_abs_final_activation'][variant]:.3f} |")
    smallest = min(summary["mean_abs_final_activation"], key=lambda v: summary["mean_abs_final_activation"][v])
    lines += ["", f"Smallest mean absolute activation: **{smallest}**" + (" (as the paper predicts)." if smallest.startswith(REFERENCE) else ".")]
    return lines


def write_report(summary: dict, settings: dict, meta: dict, out: Path, title: str, claim: str) -> Path:
    """Write OUT/report.md; ``meta`` carries the command, wall time, host and dates of the run."""
    lines = [
        f"# {title}",
        "",
        claim,
        "",
        "Reproduce with:",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"Wall time of the experiment: {meta['wall_seconds'] / 60:.1f} min, the sum over its {meta['runs']} runs "
        f"(of {meta['planned_runs']} planned; {meta['host']}; report written {meta['finished']}). Finished runs per variant: "
        + ", ".join(f"{v} {len(s)}" for v, s in summary["seeds"].items()) + ".",
        "",
        *(["Runs that did not finish (left out of every figure):", "", *[f"- {m}" for m in meta["not_finished"]], ""] if meta["not_finished"] else []),
        *_settings_table(settings),
        "",
        "## Final test error",
        "",
        *_error_table(summary),
        "",
        *_verdict(summary),
        "",
        f"![training loss and test error]({CURVES_PNG})",
        "",
        *_batch_norm_section(summary),
        "## Learning speed",
        "",
        *_speed_table(summary),
        "",
        f"![training loss against time]({SPEED_PNG})",
        "",
        "## Bias shift",
        "",
        *_bias_shift_table(summary),
        "",
        f"![mean activation per layer]({BIAS_SHIFT_PNG})",
        "",
        "All figures: mean over seeds; bands and ± are one sample standard deviation. Raw per-run data: results.json.",
        "",
    ]
    path = out / REPORT_FILE
    write_atomic(path, "\n".join(lines))
    return path
