"""The `elunet` command: one subcommand group per pipeline stage.

Each stage's ``cli.py`` registers its commands and imports its heavy
dependencies (torch, onnx, tensorrt) inside the command functions, so that
`elunet --help` and `elunet serve` work in an image without PyTorch.
"""

from __future__ import annotations

import importlib
import sys

import typer

from elunet.errors import ElunetError

STAGES = ("train", "train.experiments", "export", "plugins", "serve")

# The extra that brings each optional dependency, for the "how to fix it" hint.
EXTRA_FOR_MODULE = {
    "torch": "train",
    "safetensors": "train",
    "tqdm": "train",
    "matplotlib": "train",
    "scipy": "train",
    "onnx": "export",
    "onnxscript": "export",
    "onnxruntime": "serve",
    "fastapi": "serve",
    "uvicorn": "serve",
    "PIL": "serve",
    "prometheus_client": "serve",
    "tensorrt": "tensorrt",
}

app = typer.Typer(
    name="elunet",
    help="Train ELU networks, export them to ONNX/TensorRT with parity checks, and serve them.\n\n"
    "Pipeline: elunet train -> checkpoint -> elunet export -> model repository -> elunet serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Keeps `elunet` a command group even while a stage registers one command."""


@app.command()
def version() -> None:
    """Print the elunet version."""
    from elunet import __version__

    typer.echo(__version__)


for _stage in STAGES:
    importlib.import_module(f"elunet.{_stage}.cli").register(app)


def main() -> None:
    try:
        app()
    except ElunetError as exc:
        typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
        if exc.hint:
            typer.echo(f"  hint: {exc.hint}", err=True)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        extra = EXTRA_FOR_MODULE.get(root)
        if extra is None:
            raise
        typer.secho(f"error: this command needs the Python package {root!r}, which is not installed", fg=typer.colors.RED, err=True)
        typer.echo(f"  hint: pip install 'elunet[{extra}]'", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
