"""A benchmark's figures as JSON, for the docs' benchmark pages: what was run, when, where, on which commit."""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
from pathlib import Path

from elunet.runtime.cpus import available_cpus, cpu_name

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
RECORD_KEYS = ("command", "date", "cpu", "cpus", "commit")  # what write_figures adds to every record's figures


def add_json_option(parser: argparse.ArgumentParser, script: str) -> None:
    """``--json PATH``: where ``script``'s figures go; by default its page's JSON, docs/benchmarks/<script's name>.json.

    ``--json ''`` records nothing (a trial run, or a test of the script)."""
    default = FIGURES / f"{Path(script).stem}.json"
    parser.add_argument("--json", type=lambda text: Path(text) if text else None, default=default, metavar="PATH",
                        help=f"where the figures go, with the command, date, CPU and commit, for the docs' benchmark page "
                        f"(default: docs/benchmarks/{default.name}); --json '' records none")


def write_figures(path: Path | None, figures: dict) -> None:
    """Write ``figures`` to ``path`` with the command line, the date, the CPU and the commit they were measured with;
    ``path`` None: nothing (``--json ''``)."""
    if path is None:
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=Path(__file__).parent).stdout.strip()
    measured = (
        "python " + shlex.join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        cpu_name(),
        available_cpus(),
        commit + ("+changes" if dirty else ""),
    )
    record = {**dict(zip(RECORD_KEYS, measured)), **figures}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"figures written to {path}")


def read_figures(path: Path) -> dict:
    """The figures ``write_figures`` wrote to ``path``, without what it added (command, date, CPU, commit)."""
    return {k: v for k, v in json.loads(Path(path).read_text()).items() if k not in RECORD_KEYS}
