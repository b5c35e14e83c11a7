"""A benchmark's figures as JSON, for the docs' benchmark pages: what was run, when, where, on which commit."""

from __future__ import annotations

import datetime
import json
import shlex
import subprocess
import sys
from pathlib import Path

from elunet.runtime.cpus import available_cpus, cpu_name


def write_figures(path: Path, figures: dict) -> None:
    """Write ``figures`` to ``path`` with the command line, the date, the CPU and the commit they were measured with."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=Path(__file__).parent).stdout.strip()
    record = {
        "command": "python " + shlex.join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "cpus": available_cpus(),
        "commit": commit + ("+changes" if dirty else ""),
        **figures,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"figures written to {path}")
