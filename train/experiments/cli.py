"""`elunet experiment activations | learning-behaviour | report`.

Both experiments take the same options (a training recipe plus what to
compare); only their defaults differ, so one function builds both commands.
The recipe's options are `elunet train`'s own (train/options.py).
torch is imported inside the commands: `elunet --help` must work without it.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from elunet.errors import ElunetError
from elunet.train.config import ACTIVATION_NAMES
from elunet.train.experiments.paper import PAPER_COMMAND
from elunet.train.experiments.presets import ACTIVATIONS, LEARNING_BEHAVIOUR, Preset
from elunet.train.options import Architecture, Dataset, Device, Optimizer, Schedule, recipe_option

DEFAULT_OUT = Path("runs/experiments")


def parse_activations(text: str) -> tuple[str, ...]:
    names = tuple(a.strip() for a in text.split(",") if a.strip())
    unknown = [a for a in names if a not in ACTIVATION_NAMES]
    if unknown or not names:
        raise ElunetError(f"--activations {text!r}: unknown {', '.join(unknown) or '(empty list)'}", hint=f"a comma-separated list of: {', '.join(ACTIVATION_NAMES)}")
    if len(set(names)) != len(names):
        raise ElunetError(f"--activations {text!r} names an activation twice", hint="list each once")
    if "elu" not in names:
        raise ElunetError(f"--activations {text!r} leaves out elu, but every test compares ELU with the others", hint="add elu to the list")
    return names


def _command(preset: Preset):
    r = preset.recipe

    def command(
        dataset: Dataset = recipe_option("dataset", r.dataset),
        arch: Architecture = recipe_option("arch", r.arch),
        activations: str = typer.Option(",".join(preset.activations), help=f"Comma-separated, elu included; from {', '.join(ACTIVATION_NAMES)}."),
        bn: bool = typer.Option(False, "--bn", help="Also train each activation with batch norm (variants named e.g. relu+bn)."),
        seeds: int = typer.Option(preset.seeds, min=1, help="Runs per variant (seeds 0..N-1). With 5 the smallest possible Wilcoxon p is 0.0625; the paper used 10."),
        epochs: int = recipe_option("epochs", r.epochs),
        limit_train: Optional[int] = recipe_option("limit_train", r.limit_train),
        batch_size: int = recipe_option("batch_size", r.batch_size),
        lr: float = recipe_option("lr", r.lr),
        schedule: Schedule = recipe_option("schedule", r.schedule),
        optimizer: Optimizer = recipe_option("optimizer", r.optimizer),
        momentum: float = recipe_option("momentum", r.momentum),
        weight_decay: float = recipe_option("weight_decay", r.weight_decay),
        augment: bool = recipe_option("augment", r.augment),
        data_dir: Optional[Path] = recipe_option("data_dir", r.data_dir),
        device: Device = recipe_option("device", r.device),
        loss_threshold: Optional[float] = typer.Option(None, min=0.0, help="Training loss for the learning-speed table (default: the highest final mean training loss of the variants)."),
        out: Path = typer.Option(DEFAULT_OUT / preset.kind, help="Experiment folder: runs/<variant>-seed<k>.json, results.json, report.md, *.png. Rerunning resumes: finished runs are kept."),
    ) -> None:
        import dataclasses

        from elunet.train.experiments.runner import Experiment, run_experiment

        recipe = dataclasses.replace(
            r, dataset=dataset, arch=arch, epochs=epochs, limit_train=limit_train, batch_size=batch_size, lr=lr,
            schedule=schedule, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay, augment=augment,
            data_dir=str(data_dir) if data_dir else None, device=device,
        )
        experiment = Experiment(
            kind=preset.kind,
            title=f"{preset.title}: {arch} on {dataset}",
            claim=preset.claim,
            base=recipe,
            activations=parse_activations(activations),
            batch_norm_variants=bn,
            seeds=tuple(range(seeds)),
            out=out,
            command=shlex.join(["elunet", *sys.argv[1:]]),
            loss_threshold=loss_threshold,
        )
        report = run_experiment(experiment, log=typer.echo)
        typer.echo(f"report: {report}")

    return command


def report(out: Path = typer.Argument(..., help="An experiment folder (the --out of an experiment).")) -> None:
    """Rewrite results.json, report.md and the plots from the runs finished so far (e.g. while it still runs)."""
    from elunet.train.experiments.runner import write_outputs

    typer.echo(f"report: {write_outputs(out)}")


def register(app: typer.Typer) -> None:
    """Add `elunet experiment ...` to the root app."""
    group = typer.Typer(
        help="The paper's experiments: ELU against ReLU, leaky ReLU and SReLU, over seeds, as a report with plots.",
        no_args_is_help=True,
    )
    activations_command = _command(ACTIVATIONS)
    activations_command.__doc__ = f"""Train one architecture with each activation over several seeds; report test error, Wilcoxon tests, learning speed and bias shift.

    For each seed every activation starts from the same initial weights and sees the same data in the same order, so the runs are compared pairwise, as in the paper. Rerunning with the same --out resumes: finished runs are never repeated. Default recipe: `elunet train`'s (fashion-cnn on Fashion-MNIST) at the paper's learning rate 0.01.

    The paper's CIFAR-100 comparison, for a GPU host:

    {PAPER_COMMAND}
    """
    learning_command = _command(LEARNING_BEHAVIOUR)
    learning_command.__doc__ = """The paper's learning-behaviour figure: training loss and each layer's mean activation per epoch, 8x128 MLP.

    Defaults are the paper's recipe (plain SGD, learning rate 0.01, mini-batch 64, 300 epochs, 5 runs) on Fashion-MNIST; --dataset mnist for the paper's data, --epochs and --limit-train to make it shorter.
    """
    group.command("activations")(activations_command)
    group.command("learning-behaviour")(learning_command)
    group.command("report")(report)
    app.add_typer(group, name="experiment")
