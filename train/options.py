"""The command-line options of a training recipe, defined once for `elunet train` and `elunet experiment`.

Each option (flags, help, help panel, limits, and through its annotation the
allowed values) is written here only; a command declares the parameter with
``recipe_option(field, default)``. Choices are ``Literal`` types, so a
mistyped name is refused by the parser, before any data is loaded.
Kept free of torch so that `elunet --help` stays fast.
"""

from __future__ import annotations

from typing import Any, Literal

import typer

from elunet.train.config import ACTIVATION_NAMES, ARCHITECTURE_NAMES, DATASET_NAMES, DEVICE_NAMES, OPTIMIZER_NAMES, TrainConfig
from elunet.train.schedules import SCHEDULES

Architecture = Literal[ARCHITECTURE_NAMES]
Activation = Literal[ACTIVATION_NAMES]
Dataset = Literal[DATASET_NAMES]
Optimizer = Literal[OPTIMIZER_NAMES]
Schedule = Literal[tuple(SCHEDULES)]
Device = Literal[DEVICE_NAMES]

MODEL_PANEL = "Model"
DATA_PANEL = "Data"
OPTIMIZATION_PANEL = "Optimization"
RUN_PANEL = "Run folder"
HARDWARE_PANEL = "Hardware and numerics"

_D = TrainConfig()  # the defaults, from the one place that defines them

# field -> (flag declarations, panel, help, further typer.Option arguments)
_OPTIONS: dict[str, tuple[tuple[str, ...], str, str, dict[str, Any]]] = {
    "arch": ((), MODEL_PANEL, "Network.", {}),
    "activation": ((), MODEL_PANEL, "Activation.", {}),
    "alpha": ((), MODEL_PANEL, "ELU/CELU alpha (default 1.0, the paper's).", {}),
    "bn": (("--bn/--no-bn",), MODEL_PANEL, "Batch norm after each conv (the paper: helps ReLU, not ELU).", {}),
    "name": ((), MODEL_PANEL, "Model name in the card (default ARCH-ACTIVATION).", {}),
    "dataset": ((), DATA_PANEL, "Dataset (see `elunet datasets`).", {}),
    "data_dir": (
        (), DATA_PANEL,
        "Folder holding the dataset (default: $ELUNET_DATA, then /usr/share/datasets). For imagefolder: DIR/<class>/<image>. "
        "May change on --resume (a moved dataset).", {},
    ),
    "image_size": ((), DATA_PANEL, "imagefolder: images are resized to SIZE x SIZE.", {"min": 1}),
    "channels": ((), DATA_PANEL, "imagefolder: 1 (grayscale) or 3 (RGB).", {}),
    "limit_train": ((), DATA_PANEL, "Train on a seeded random subset of N training images (quick runs); the test split stays whole.", {"min": 1}),
    "augment": (("--augment/--no-augment",), DATA_PANEL, "Random crops from padded images (+ flips where the dataset allows).", {}),
    "epochs": ((), OPTIMIZATION_PANEL, "Passes over the training set.", {"min": 1}),
    "batch_size": ((), OPTIMIZATION_PANEL, "Mini-batch size per process.", {"min": 1}),
    "optimizer": ((), OPTIMIZATION_PANEL, "SGD uses Nesterov momentum when momentum > 0.", {}),
    "lr": ((), OPTIMIZATION_PANEL, "Peak learning rate.", {"min": 0.0}),
    "schedule": ((), OPTIMIZATION_PANEL, "Learning-rate schedule: " + "; ".join(f"{k}: {v}" for k, v in SCHEDULES.items()) + ".", {}),
    "momentum": ((), OPTIMIZATION_PANEL, "SGD momentum (the paper's 0.9; 0 is plain SGD).", {"min": 0.0}),
    "weight_decay": ((), OPTIMIZATION_PANEL, "L2 weight decay (the paper's 5e-4); decoupled for AdamW.", {"min": 0.0}),
    "seed": ((), OPTIMIZATION_PANEL, "Seeds initial weights, shuffling, augmentation (per process) and dropout.", {}),
    "out": ((), RUN_PANEL, "Run folder: checkpoints epoch-NNNN/, 'latest', metrics.jsonl.", {}),
    "keep": ((), RUN_PANEL, "Checkpoints to keep in --out.", {"min": 1}),
    "device": ((), HARDWARE_PANEL, "auto (CUDA if available), cpu or cuda. May change on --resume.", {}),
    "amp": (("--amp/--no-amp",), HARDWARE_PANEL, "Mixed precision on CUDA (bf16, or fp16 with loss scaling); evaluation stays float32.", {}),
    "channels_last": (("--channels-last/--no-channels-last",), HARDWARE_PANEL, "NHWC memory layout (faster convolutions on CPU and tensor cores).", {}),
    "compile": (("--compile/--no-compile",), HARDWARE_PANEL, "torch.compile the model.", {}),
}


def recipe_option(field: str, default: Any = None, *, panel: str | None = None) -> Any:
    """The typer option of TrainConfig ``field``, with ``default`` (None: `elunet train`'s default)."""
    decls, own_panel, help_text, extra = _OPTIONS[field]
    value = getattr(_D, field) if default is None else default
    return typer.Option(value, *decls, help=help_text, rich_help_panel=panel or own_panel, **extra)
