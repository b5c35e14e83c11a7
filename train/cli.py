"""Commands of the train stage: `elunet train` and `elunet datasets`.

torch is imported inside the command functions: `elunet --help` must work without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from elunet.train.config import ACTIVATION_NAMES, ARCHITECTURE_NAMES, DATASET_NAMES, OPTIMIZER_NAMES, RUNTIME_FIELDS, TrainConfig, wait_passively_for_openmp
from elunet.train.schedules import SCHEDULES

D = TrainConfig()  # the defaults, from the one place that defines them


def train(
    ctx: typer.Context,
    arch: str = typer.Option(D.arch, help=f"Network: {', '.join(ARCHITECTURE_NAMES)}."),
    activation: str = typer.Option(D.activation, help=f"Activation: {', '.join(ACTIVATION_NAMES)}."),
    alpha: Optional[float] = typer.Option(None, help="ELU/CELU alpha (default 1.0, the paper's)."),
    bn: bool = typer.Option(D.bn, "--bn/--no-bn", help="Batch norm after each conv (the paper: helps ReLU, not ELU)."),
    dataset: str = typer.Option(D.dataset, help=f"Dataset: {', '.join(DATASET_NAMES)} (see `elunet datasets`)."),
    data_dir: Optional[Path] = typer.Option(None, help="Folder holding the dataset (default: $ELUNET_DATA, then /usr/share/datasets). For imagefolder: DIR/<class>/<image>."),
    image_size: int = typer.Option(D.image_size, help="imagefolder: images are resized to SIZE x SIZE."),
    channels: int = typer.Option(D.channels, help="imagefolder: 1 (grayscale) or 3 (RGB)."),
    epochs: int = typer.Option(D.epochs, min=1, help="Passes over the training set."),
    batch_size: int = typer.Option(D.batch_size, min=1, help="Mini-batch size per process."),
    lr: float = typer.Option(D.lr, min=0.0, help="Peak learning rate."),
    schedule: str = typer.Option(D.schedule, help="Learning-rate schedule: " + "; ".join(f"{k}: {v}" for k, v in SCHEDULES.items()) + "."),
    optimizer: str = typer.Option(D.optimizer, help=f"{' or '.join(OPTIMIZER_NAMES)}: SGD uses Nesterov momentum."),
    momentum: float = typer.Option(D.momentum, help="SGD momentum (the paper's 0.9)."),
    weight_decay: float = typer.Option(D.weight_decay, help="L2 weight decay (the paper's 5e-4); decoupled for AdamW."),
    augment: bool = typer.Option(D.augment, "--augment/--no-augment", help="Random crops from padded images (+ flips where the dataset allows)."),
    seed: int = typer.Option(D.seed, help="Seeds initial weights, shuffling, augmentation and dropout."),
    limit_train: Optional[int] = typer.Option(None, min=1, help="Train on a seeded random subset of N training images (quick runs)."),
    name: Optional[str] = typer.Option(None, help="Model name in the card (default ARCH-ACTIVATION)."),
    out: Path = typer.Option(Path(D.out), help="Run folder: checkpoints epoch-NNNN/, 'latest', metrics.jsonl."),
    resume: bool = typer.Option(
        False, "--resume",
        help="Continue the run in --out from its latest checkpoint, exactly, with the options it was started with "
        "(as a torchrun restart re-runs the same command, and as Lightning's resume restores the run's optimizer state). "
        "Options typed that differ from the run's are refused with the list of differences, even when the new value is the "
        "default: a changed --lr or --epochs would change the schedule midway and the result would be neither run. Only "
        f"{', '.join('--' + f.replace('_', '-') for f in sorted(RUNTIME_FIELDS - {'out'}))} may change.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace a run already in --out."),
    device: str = typer.Option(D.device, help="auto (CUDA if available), cpu or cuda."),
    amp: bool = typer.Option(D.amp, "--amp/--no-amp", help="Mixed precision on CUDA (bf16, or fp16 with loss scaling)."),
    channels_last: bool = typer.Option(D.channels_last, "--channels-last/--no-channels-last", help="NHWC memory layout (faster convolutions on CPU and tensor cores)."),
    compile: bool = typer.Option(D.compile, "--compile", help="torch.compile the model."),
    keep: int = typer.Option(D.keep, min=1, help="Checkpoints to keep in --out."),
) -> None:
    """Train a network; defaults: fashion-cnn with ELU on Fashion-MNIST (>= 93 % test accuracy).

    Under `torchrun --nproc_per_node N elunet train ...` it trains with DistributedDataParallel.
    Each epoch appends a line to OUT/metrics.jsonl (train/test loss and accuracy, lr, images/s,
    mean activation per layer) and writes a checkpoint OUT/epoch-NNNN (model.safetensors + card.json).
    """
    wait_passively_for_openmp()
    from elunet.train.loop import train as run_training

    cfg = TrainConfig(
        arch=arch, activation=activation, alpha=alpha, bn=bn, dataset=dataset, data_dir=str(data_dir) if data_dir else None,
        image_size=image_size, channels=channels, limit_train=limit_train, epochs=epochs, batch_size=batch_size,
        optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay, schedule=schedule, augment=augment,
        seed=seed, name=name, out=str(out), device=device, amp=amp, channels_last=channels_last, compile=compile, keep=keep,
    )
    # Options typed on the command line, even where the value equals the default (by the source's
    # name: typer runs its own copy of click, whose ParameterSource is not click's).
    given = {f for f in TrainConfig.__dataclass_fields__ if getattr(ctx.get_parameter_source(f), "name", None) == "COMMANDLINE"}
    checkpoint = run_training(cfg, resume=resume, force=force, log=typer.echo, given=given)
    typer.echo(f"checkpoint: {checkpoint}")


def datasets(data_dir: Optional[Path] = typer.Option(None, help="Look only here (default: $ELUNET_DATA, then /usr/share/datasets).")) -> None:
    """List the datasets `elunet train` knows, and where each is found (or what to do to get it)."""
    from elunet.train.data import DATASETS, IMAGEFOLDER, candidate_folders, find_dataset

    for name, info in DATASETS.items():
        folder = find_dataset(name, data_dir)
        if folder:
            typer.echo(f"{name:<14} found      {folder}")
        else:
            typer.echo(f"{name:<14} not found  searched: {', '.join(str(p) for p in candidate_folders(name, data_dir))}")
            typer.echo(f"{'':<14}            get it: {info.how_to_get}")
    typer.echo(f"{IMAGEFOLDER:<14} your own  --dataset imagefolder --data-dir DIR (DIR/<class>/<image>) --image-size 32 --channels 3")


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root `elunet` app."""
    app.command()(train)
    app.command()(datasets)
