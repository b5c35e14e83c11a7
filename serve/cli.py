"""Commands of the serve stage."""

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root `elunet` app."""
