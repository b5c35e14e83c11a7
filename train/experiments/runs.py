"""Where an experiment keeps its runs, so that an interrupted experiment resumes where it stopped.

Layout of an experiment directory::

    OUT/experiment.json             the settings every run shares (checked on resume)
    OUT/plan.json                   variants, seeds, title and command of the latest invocation
    OUT/init/seed<k>[+bn].safetensors the initial weights every activation of seed k starts from
    OUT/work/<variant>-seed<k>/     the run in progress (the training loop's checkpoints)
    OUT/runs/<variant>-seed<k>.json one finished run, written atomically when it ends
    OUT/results.json, OUT/report.md, OUT/*.png   written from the finished runs

A run file exists only once its run finished (it is written in one atomic
rename), so "is it there" is the whole resume logic: a finished run is never
repeated; an interrupted one continues from its last epoch checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from elunet.files import write_atomic
from elunet.errors import ElunetError

RUN_SCHEMA = "elunet.experiment.run/1"
SETTINGS_FILE = "experiment.json"
RUNS_DIR = "runs"
BN_SUFFIX = "+bn"


def variant_name(activation: str, batch_norm: bool) -> str:
    """How a (activation, batch norm) pair is named in files, tables and plots: 'elu' or 'elu+bn'."""
    return activation + (BN_SUFFIX if batch_norm else "")


@dataclass(frozen=True, order=True)
class RunKey:
    variant: str
    seed: int

    @property
    def activation(self) -> str:
        return self.variant.removesuffix(BN_SUFFIX)

    @property
    def batch_norm(self) -> bool:
        return self.variant.endswith(BN_SUFFIX)

    @property
    def filename(self) -> str:
        return f"{self.variant}-seed{self.seed}.json"


class RunStore:
    """The finished runs of one experiment directory."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.runs_dir = self.out / RUNS_DIR

    def open(self, settings: dict) -> None:
        """Create the directory, or check that an existing one was made with the same settings.

        Resuming with different settings would mix runs that are not comparable,
        so it is refused; the variants and seeds may differ (adding seeds to a
        finished experiment is how one extends it).
        """
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        path = self.out / SETTINGS_FILE
        text = json.dumps(settings, indent=2, sort_keys=True) + "\n"
        if path.exists():
            previous = json.loads(path.read_text())
            if previous != json.loads(text):
                changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
                details = ", ".join(f"{k}: {previous.get(k)!r} -> {settings.get(k)!r}" for k in changed)
                raise ElunetError(
                    f"{self.out} holds an experiment with different settings ({details})",
                    hint="resume with the same options, or pass a new --out directory",
                )
            return
        write_atomic(path, text)

    def settings(self) -> dict:
        path = self.out / SETTINGS_FILE
        if not path.exists():
            raise ElunetError(f"{self.out} is not an experiment directory (no {SETTINGS_FILE})", hint="pass the --out of an experiment")
        return json.loads(path.read_text())

    def path(self, key: RunKey) -> Path:
        return self.runs_dir / key.filename

    def is_done(self, key: RunKey) -> bool:
        return self.path(key).exists()

    def save(self, key: RunKey, record: dict) -> None:
        record = {"schema": RUN_SCHEMA, "variant": key.variant, "activation": key.activation, "batch_norm": key.batch_norm, "seed": key.seed, **record}
        write_atomic(self.path(key), json.dumps(record, indent=1) + "\n")

    def load(self, key: RunKey) -> dict:
        return json.loads(self.path(key).read_text())

    def finished(self, keys: list[RunKey]) -> list[dict]:
        """The records of those keys whose run finished, in the order given."""
        return [self.load(k) for k in keys if self.is_done(k)]
