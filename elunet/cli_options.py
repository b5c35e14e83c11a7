"""Command-line options that more than one command takes, each defined once so their names cannot drift.

`elunet serve`'s options come from its settings model instead (serve/settings.py), whose
``max_batch_size`` has the same flag name but another meaning: the largest batch it forms for a
model whose config.pbtxt sets none.
"""

from __future__ import annotations

import typer

from elunet.model_config import DEFAULT_MAX_BATCH_SIZE

MAX_BATCH_SIZE_FLAG = "--max-batch-size"


def max_batch_size_option(also: str = ""):
    """``--max-batch-size`` of `elunet export` and `elunet build-engine`: the model's max_batch_size in config.pbtxt;
    ``also`` appends what else the command does with it."""
    return typer.Option(DEFAULT_MAX_BATCH_SIZE, MAX_BATCH_SIZE_FLAG, min=1,
                        help=f"max_batch_size in the repository's config.pbtxt{also}")


def skip_verify_option():
    """``--skip-verify`` of `elunet export` and `elunet build-engine`: publishing without a parity check is asked for, never
    the silent result of leaving out --checkpoint."""
    return typer.Option(False, "--skip-verify", help="publish without the parity check (the card records parity: skipped)")
