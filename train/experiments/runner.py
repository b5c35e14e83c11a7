"""Run an experiment: every (variant, seed) through `elunet train`'s loop, then the report.

Runs go seed by seed (seed 0 of every variant, then seed 1, ...), so an
experiment stopped half way already has complete pairs to compare. For a
given seed every activation starts from the same initial weights: the seed's
first run saves its freshly initialised weights, every later run of that
seed loads them (activations have no parameters, so the weights fit every
activation; batch-norm variants have their own set).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from elunet.files import write_atomic
from elunet.errors import ElunetError
from elunet.train.checkpoint import LATEST_FILE, METRICS_FILE
from elunet.train.config import RUNTIME_FIELDS, TrainConfig
from elunet.train.experiments.plots import plot_bias_shift, plot_curves, plot_learning_speed
from elunet.train.experiments.report import write_report
from elunet.train.experiments.runs import RunKey, RunStore, variant_name
from elunet.train.experiments.summary import summarize

RESULTS_FILE = "results.json"
PLAN_FILE = "plan.json"  # the latest invocation: variants, seeds, title and command (may grow on resume)
RESULTS_SCHEMA = "elunet.experiment.results/1"
INIT_DIR = "init"
WORK_DIR = "work"
# What a run key sets; the rest of TrainConfig is the experiment's shared settings.
PER_RUN_FIELDS = frozenset({"activation", "bn", "seed", "name"})


@dataclass(frozen=True)
class Experiment:
    kind: str  # "activations" or "learning-behaviour": names the report and the settings
    title: str
    claim: str  # what the paper says this experiment shows, printed at the top of the report
    base: TrainConfig  # the training recipe every run shares; activation, bn, seed and out are set per run
    activations: tuple[str, ...]
    batch_norm_variants: bool
    seeds: tuple[int, ...]
    out: Path
    command: str  # the command line that reproduces it, for the report
    loss_threshold: float | None = None  # None: chosen from the curves (see stats.default_loss_thresholds)

    def settings(self) -> dict:
        """What every run shares and a resumed experiment must keep."""
        shared = {k: v for k, v in dataclasses.asdict(self.base).items() if k not in RUNTIME_FIELDS | PER_RUN_FIELDS}
        return {"experiment": self.kind, **shared}

    def variants(self) -> list[str]:
        bns = (False, True) if self.batch_norm_variants else (False,)
        return [variant_name(a, bn) for bn in bns for a in self.activations]

    def keys(self) -> list[RunKey]:
        return [RunKey(v, s) for s in self.seeds for v in self.variants()]


class SharedInitialWeights:
    """The initial weights of one (seed, batch norm) group, shared by its activations through a file."""

    def __init__(self, path: Path):
        self.path = path
        self.sha256: str | None = None

    def apply(self, model: nn.Module) -> None:
        """Called by the training loop on its freshly built model: save its weights, or load the saved ones."""
        from safetensors.torch import load_file, save_file

        body = model.body  # the normalization buffers are fitted per run (on the same data): not initial weights
        if self.path.exists():
            body.load_state_dict(load_file(str(self.path)))
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            save_file({k: v.detach().contiguous().clone() for k, v in body.state_dict().items()}, str(tmp))
            tmp.replace(self.path)
        self.sha256 = state_sha256(body.state_dict())


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """A digest of a state dict's names and values, independent of memory layout."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _epochs(metrics: list[dict]) -> list[dict]:
    """The loop's metrics.jsonl lines, as the per-epoch entries of a run record."""
    elapsed = 0.0
    epochs = []
    for m in metrics:
        elapsed += m["epoch_seconds"]
        epochs.append(
            {
                "epoch": m["epoch"],
                "train_loss": m["train_loss"],
                "test_loss": m["test_loss"],
                "test_error": round(1.0 - m["test_acc"], 6),
                "train_seconds": round(elapsed, 3),
                "mean_activation": m["mean_activation"],
            }
        )
    return epochs


def run_one(exp: Experiment, key: RunKey, log: Callable[[str], None]) -> dict:
    """Train one (variant, seed); returns its record. An interrupted run's folder is resumed exactly."""
    from elunet.train.loop import TrainingDiverged, train

    work = exp.out / WORK_DIR / key.filename.removesuffix(".json")
    cfg = dataclasses.replace(exp.base, activation=key.activation, bn=key.batch_norm, seed=key.seed, out=str(work), name=None)
    init = SharedInitialWeights(exp.out / INIT_DIR / f"{variant_name('seed' + str(key.seed), key.batch_norm)}.safetensors")
    resume = (work / LATEST_FILE).is_file()
    started = time.perf_counter()
    status, message = "finished", None
    try:
        train(cfg, resume=resume, force=not resume, log=log, prepare_model=init.apply)
    except TrainingDiverged as exc:
        # A result, not a crash: the paper's learning rates were tuned for ReLU, and other activations may not cope.
        status, message = "diverged", exc.message
        log(f"{key.filename}: diverged ({exc.message})")
    epochs = _epochs(_read_metrics(work))
    record = {
        "status": status,
        "message": message,
        "init_sha256": init.sha256 if not resume else None,  # unknown when resumed from a checkpoint
        "wall_seconds": round(time.perf_counter() - started, 2),
        "resumed": resume,
        "final_test_error": epochs[-1]["test_error"] if status == "finished" else None,
        "epochs": epochs,
    }
    shutil.rmtree(work)  # the experiment keeps the record; checkpoints of 20+ runs are not worth the disk
    return record


def run_experiment(exp: Experiment, log: Callable[[str], None] = print) -> Path:
    """Train every run not yet finished, then write results.json, report.md and the plots; returns the report."""
    from tqdm import tqdm

    store = RunStore(exp.out)
    store.open(exp.settings())
    plan = {"title": exp.title, "claim": exp.claim, "variants": exp.variants(), "seeds": list(exp.seeds),
            "command": exp.command, "loss_threshold": exp.loss_threshold}
    write_atomic(exp.out / PLAN_FILE, json.dumps(plan, indent=1) + "\n")
    keys = exp.keys()
    todo = [k for k in keys if not store.is_done(k)]
    log(f"{exp.kind}: {len(keys)} runs ({len(exp.variants())} variants x {len(exp.seeds)} seeds), "
        f"{len(keys) - len(todo)} already finished, {len(todo)} to train -> {exp.out}")
    bar = tqdm(todo, desc="runs", unit="run", dynamic_ncols=True)
    for key in bar:
        bar.set_postfix_str(f"{key.variant} seed {key.seed}")
        record = run_one(exp, key, log=lambda m, k=key: tqdm.write(f"[{k.variant} seed {k.seed}] {m}"))
        store.save(key, record)
    bar.close()
    return write_outputs(exp.out)


def write_outputs(out: Path) -> Path:
    """results.json, the PNGs and report.md from the runs finished so far in OUT (also mid-experiment)."""
    store = RunStore(out)
    settings = store.settings()
    plan_path = Path(out) / PLAN_FILE
    plan = json.loads(plan_path.read_text())
    records = store.finished([RunKey(v, s) for s in plan["seeds"] for v in plan["variants"]])
    finished = [r for r in records if r["status"] == "finished"]
    if not finished:
        raise ElunetError(f"{out} has no finished runs to report on", hint="run the experiment first (it resumes where it stopped)")
    summary = summarize(finished, plan["variants"], settings, plan["loss_threshold"])
    meta = {
        "command": plan["command"],
        "runs": len(records),
        "planned_runs": len(plan["variants"]) * len(plan["seeds"]),
        "not_finished": [f"{r['variant']} seed {r['seed']}: {r['status']}: {r['message']}" for r in records if r["status"] != "finished"],
        "wall_seconds": round(sum(r["wall_seconds"] for r in records), 1),
        "host": f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, intra-op threads: {torch.get_num_threads()}",
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    results = {"schema": RESULTS_SCHEMA, "title": plan["title"], "settings": settings, "meta": meta, "summary": summary, "runs": records}
    write_atomic(Path(out) / RESULTS_FILE, json.dumps(results, indent=1) + "\n")
    for plot in (plot_curves, plot_learning_speed, plot_bias_shift):
        plot(summary, Path(out), plan["title"])
    return write_report(summary, settings, meta, Path(out), plan["title"], plan["claim"])
