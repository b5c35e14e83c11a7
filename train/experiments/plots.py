"""The report's PNG figures, drawn from a summary (summary.py) alone.

Curves are the mean over seeds with a band of ± one standard deviation.
matplotlib's Agg backend draws without a display, so this runs on servers.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

CURVES_PNG = "curves.png"
SPEED_PNG = "learning_speed.png"
BIAS_SHIFT_PNG = "bias_shift.png"

# One fixed colour per activation, so every figure and report reads alike; batch-norm variants are dashed.
COLOURS = {"elu": "tab:blue", "relu": "tab:red", "lrelu": "tab:orange", "srelu": "tab:green", "celu": "tab:purple", "selu": "tab:brown"}


def _style(variant: str) -> dict:
    activation, _, bn = variant.partition("+")
    return {"color": COLOURS.get(activation, "tab:gray"), "linestyle": "--" if bn else "-", "label": variant}


def _band(ax, x, curve: dict, variant: str, scale: float = 1.0) -> None:
    mean = np.asarray(curve["mean"]) * scale
    std = np.asarray(curve["std"]) * scale
    style = _style(variant)
    ax.plot(x, mean, **style)
    ax.fill_between(x, mean - std, mean + std, color=style["color"], alpha=0.15, linewidth=0)


def _threshold_lines(ax, summary: dict) -> None:
    for i, threshold in enumerate(summary["loss_thresholds"]):
        ax.axhline(threshold, color="black", linewidth=0.8, linestyle=":", label="speed thresholds" if i == 0 else None)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(summary: dict, out: Path, title: str) -> Path:
    """Training loss and test error per epoch, per variant."""
    fig, (loss_ax, error_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant, curve in summary["curves"].items():
        _band(loss_ax, curve["epoch"], curve["train_loss"], variant)
        _band(error_ax, curve["epoch"], curve["test_error"], variant, scale=100.0)
    loss_ax.set(xlabel="epoch", ylabel="training loss (cross-entropy)", yscale="log", title="training loss")
    error_ax.set(xlabel="epoch", ylabel="test error (%)", title="test error")
    _threshold_lines(loss_ax, summary)
    for ax in (loss_ax, error_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, out / CURVES_PNG)


def plot_learning_speed(summary: dict, out: Path, title: str) -> Path:
    """Training loss against training time (seconds), the wall-clock view of learning speed."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for variant, curve in summary["curves"].items():
        _band(ax, curve["train_seconds"]["mean"], curve["train_loss"], variant)
    _threshold_lines(ax, summary)
    ax.set(xlabel="training time (s, mean over seeds)", ylabel="training loss", yscale="log", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out / SPEED_PNG)


def plot_bias_shift(summary: dict, out: Path, title: str) -> Path:
    """The paper's bias-shift view: each layer's mean unit activation per epoch, one panel per variant."""
    variants = [v for v, c in summary["curves"].items() if c["mean_activation"]]
    if not variants:
        raise ValueError("no mean activations were recorded, so there is no bias-shift plot to draw")
    columns = min(4, len(variants))
    rows = -(-len(variants) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.2 * rows), sharey=True, squeeze=False)
    for ax, variant in zip(axes.flat, variants):
        curve = summary["curves"][variant]
        layers = list(curve["mean_activation"])
        colours = plt.cm.viridis(np.linspace(0, 0.9, len(layers)))
        for colour, layer in zip(colours, layers):
            ax.plot(curve["epoch"], curve["mean_activation"][layer]["mean"], color=colour, label=layer)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set(title=variant, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(variants):]:
        ax.set_visible(False)
    axes[0][0].set_ylabel("mean activation of the layer's units")
    axes[0][0].legend(fontsize=6, title="layer", title_fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, out / BIAS_SHIFT_PNG)
