"""Commands of the plugins stage."""

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root `elunet` app."""
