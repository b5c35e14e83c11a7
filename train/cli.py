"""Commands of the train stage: `elunet train` and `elunet datasets`.

torch is imported inside the command functions: `elunet --help` must work without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from elunet.train.config import RUNTIME_FIELDS, TrainConfig, wait_passively_for_openmp
from elunet.train.options import RUN_PANEL, Activation, Architecture, Dataset, Device, Optimizer, Schedule, recipe_option


def train(
    ctx: typer.Context,
    arch: Architecture = recipe_option("arch"),
    activation: Activation = recipe_option("activation"),
    alpha: Optional[float] = recipe_option("alpha"),
    bn: bool = recipe_option("bn"),
    name: Optional[str] = recipe_option("name"),
    dataset: Dataset = recipe_option("dataset"),
    data_dir: Optional[Path] = recipe_option("data_dir"),
    image_size: int = recipe_option("image_size"),
    channels: int = recipe_option("channels"),
    limit_train: Optional[int] = recipe_option("limit_train"),
    augment: bool = recipe_option("augment"),
    epochs: int = recipe_option("epochs"),
    batch_size: int = recipe_option("batch_size"),
    lr: float = recipe_option("lr"),
    schedule: Schedule = recipe_option("schedule"),
    optimizer: Optimizer = recipe_option("optimizer"),
    momentum: float = recipe_option("momentum"),
    weight_decay: float = recipe_option("weight_decay"),
    seed: int = recipe_option("seed"),
    out: Path = recipe_option("out"),
    resume: bool = typer.Option(
        False, "--resume", rich_help_panel=RUN_PANEL,
        help="Continue the run in --out from its latest checkpoint, exactly, with the options it was started with "
        "(as a torchrun restart re-runs the same command, and as Lightning's resume restores the run's optimizer state). "
        "Options typed that differ from the run's are refused with the list of differences, even when the new value is the "
        "default: a changed --lr or --epochs would change the schedule midway and the result would be neither run. Only "
        f"{', '.join('--' + f.replace('_', '-') for f in sorted(RUNTIME_FIELDS - {'out'}))} may change.",
    ),
    force: bool = typer.Option(False, "--force", rich_help_panel=RUN_PANEL, help="Replace a run already in --out."),
    keep: int = recipe_option("keep"),
    device: Device = recipe_option("device"),
    amp: bool = recipe_option("amp"),
    channels_last: bool = recipe_option("channels_last"),
    compile: bool = recipe_option("compile"),
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
