"""Checkpoints: safetensors weights + a JSON model card, written atomically, loaded without pickle.

A checkpoint folder::

    model.safetensors      the weights (incl. the normalization buffers)
    card.json              the ModelCard; weights_sha256 = sha256 of model.safetensors
    optimizer.safetensors  resume state: the optimizer's tensors       (training runs only)
    train_state.json       resume state: epoch, step, optimizer scalars (training runs only)

A run folder (``elunet train --out RUN``) holds ``metrics.jsonl``, checkpoint
folders ``epoch-NNNN`` and ``latest``, a one-line file naming the newest one.
Every folder is written under a temporary name and renamed into place, and
``latest`` is replaced atomically, so an interrupted run always leaves a
complete checkpoint behind. A model-repository version folder also holds
``model.safetensors`` + ``card.json``, so ``load_checkpoint`` reads it too.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from elunet.card import CARD_FILE, ModelCard
from elunet.files import sha256_file, write_atomic
from elunet.contracts import WEIGHTS_FILE
from elunet.errors import ElunetError
from elunet.train.models import build_model

OPTIMIZER_FILE = "optimizer.safetensors"
TRAIN_STATE_FILE = "train_state.json"
LATEST_FILE = "latest"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_PREFIX = "epoch-"


@dataclass
class LoadedCheckpoint:
    model: nn.Module  # eval mode, float32, on the CPU
    card: ModelCard
    sha256: str  # of the weights file
    path: Path  # the checkpoint (or version) folder


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors wants contiguous, unshared CPU tensors (channels_last weights are not contiguous).
    return {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone() for k, v in unwrap(model).state_dict().items()}


# ---------------------------------------------------------------- optimizer state without pickle


def _split_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer.state_dict() -> (tensors for safetensors, everything else for JSON)."""
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict] = {}
    for flat, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, key = flat.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


# ---------------------------------------------------------------- saving


def save_checkpoint(
    folder: Path,
    model: nn.Module,
    card: ModelCard,
    optimizer: torch.optim.Optimizer | None = None,
    train_state: dict[str, Any] | None = None,
) -> ModelCard:
    """Write a checkpoint folder atomically; returns the card with ``weights_sha256`` filled in.

    ``optimizer`` and ``train_state`` (JSON-able: epoch, step, ...) make it resumable.
    An existing folder of the same name is replaced.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_weights(model), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    card = card.model_copy(update={"weights_sha256": sha256_file(tmp / WEIGHTS_FILE)})
    card.save(tmp / CARD_FILE)
    if optimizer is not None:
        tensors, meta = _split_optimizer_state(optimizer.state_dict())
        save_file(tensors, str(tmp / OPTIMIZER_FILE))
        (tmp / TRAIN_STATE_FILE).write_text(json.dumps({**(train_state or {}), "optimizer": meta}, indent=1))
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old)
    else:
        tmp.rename(folder)
    return card


def checkpoint_name(epoch: int) -> str:
    return f"{CHECKPOINT_PREFIX}{epoch:04d}"


def save_run_checkpoint(run_dir: Path, epoch: int, model, card, optimizer, train_state, keep: int = 2) -> tuple[Path, ModelCard]:
    """Save ``RUN/epoch-NNNN``, point ``RUN/latest`` at it, and delete all but the newest ``keep``."""
    folder = Path(run_dir) / checkpoint_name(epoch)
    card = save_checkpoint(folder, model, card, optimizer, train_state)
    write_atomic(Path(run_dir) / LATEST_FILE, folder.name + "\n")
    for old in sorted(Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*"))[:-keep]:
        shutil.rmtree(old)
    return folder, card


# ---------------------------------------------------------------- loading


def resolve_checkpoint(path: Path | str) -> Path:
    """A run folder (-> its latest checkpoint), a checkpoint folder or a repository version folder."""
    path = Path(path)
    if path.is_file() and path.name in (WEIGHTS_FILE, CARD_FILE):
        path = path.parent
    if (path / LATEST_FILE).is_file():
        name = (path / LATEST_FILE).read_text().strip()
        if not (path / name / WEIGHTS_FILE).is_file():
            raise ElunetError(f"{path / LATEST_FILE} points at {name!r}, which holds no {WEIGHTS_FILE}", hint="the run folder is damaged; pass one of its epoch-* folders instead")
        return path / name
    if not path.exists():
        raise ElunetError(f"checkpoint path {path} does not exist", hint="pass the --out folder of `elunet train`, one of its epoch-* folders, or a model-repository version folder")
    missing = [f for f in (WEIGHTS_FILE, CARD_FILE) if not (path / f).is_file()]
    if missing:
        raise ElunetError(
            f"{path} is not a checkpoint: missing {', '.join(missing)}",
            hint=f"a checkpoint folder holds {WEIGHTS_FILE} and {CARD_FILE}; a run folder holds a '{LATEST_FILE}' file. Train one with `elunet train --out DIR`",
        )
    return path


def _read_safetensors(path: Path, hint: str = "the file is damaged or not safetensors; retrain or copy it again") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ElunetError(f"{path} is truncated or corrupt ({exc})", hint=hint) from None


def load_weights_into(model: nn.Module, weights: dict[str, torch.Tensor], source: Path, card: ModelCard) -> None:
    """Load weights, explaining any disagreement with the card's architecture in the user's terms."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [f"{k}: card implies {tuple(expected[k].shape)}, weights have {tuple(weights[k].shape)}" for k in expected if k in weights and expected[k].shape != weights[k].shape]
    if missing or unexpected or wrong:
        details = (
            ([f"missing tensors: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"] if missing else [])
            + ([f"unexpected tensors: {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}"] if unexpected else [])
            + wrong[:5]
        )
        raise ElunetError(
            f"{source} does not match its card ({card.architecture}, {card.activation}, batch_norm={card.batch_norm}, "
            f"{card.num_classes} classes, input {card.input_shape}):\n  " + "\n  ".join(details),
            hint="card.json and model.safetensors must come from the same `elunet train` run; do not mix files of different checkpoints",
        )
    model.load_state_dict(weights)


def load_checkpoint(path: Path | str) -> LoadedCheckpoint:
    """The model and card in a run folder (latest checkpoint), checkpoint folder or repository version folder."""
    folder = resolve_checkpoint(path)
    card = ModelCard.load(folder / CARD_FILE)
    sha = sha256_file(folder / WEIGHTS_FILE)
    if card.weights_sha256 is not None and card.weights_sha256 != sha:
        raise ElunetError(
            f"{folder / WEIGHTS_FILE} has sha256 {sha[:12]}..., but its card expects {card.weights_sha256[:12]}...",
            hint="the weights were changed or replaced after the card was written; use the files of one checkpoint together",
        )
    model = build_model(card)
    load_weights_into(model, _read_safetensors(folder / WEIGHTS_FILE), folder / WEIGHTS_FILE, card)
    return LoadedCheckpoint(model=model.float().eval(), card=card, sha256=sha, path=folder)


def _resume_hint(folder: Path) -> str:
    """How to get going again when the checkpoint to resume from is damaged."""
    run = folder.parent
    earlier = [p for p in sorted(run.glob(f"{CHECKPOINT_PREFIX}*")) if p.name < folder.name and (p / WEIGHTS_FILE).is_file()]
    start_over = f"or start over: `elunet train --out {run} --force`"
    if not earlier:
        return f"no earlier checkpoint is left in {run}; {start_over}"
    return (
        f"resume from the previous checkpoint instead: `echo {earlier[-1].name} > {run / LATEST_FILE}`, then the same "
        f"`elunet train --out {run} --resume` (the epochs after it are trained again), {start_over}"
    )


def load_resume_state(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict]:
    """(weights, train_state without the optimizer, optimizer state_dict) of a resumable checkpoint folder.

    A damaged file (an interrupted copy, a full disk) is one error naming the file and the
    checkpoint to fall back on, never a traceback from the file format's reader.
    """
    folder = Path(folder)
    hint = _resume_hint(folder)
    if not (folder / TRAIN_STATE_FILE).is_file() or not (folder / OPTIMIZER_FILE).is_file():
        raise ElunetError(f"{folder} holds no resume state ({TRAIN_STATE_FILE}, {OPTIMIZER_FILE})", hint="--resume continues runs of `elunet train`; start a new run with --force instead")
    card = ModelCard.load(folder / CARD_FILE)
    if card.weights_sha256 is not None and sha256_file(folder / WEIGHTS_FILE) != card.weights_sha256:
        raise ElunetError(f"{folder / WEIGHTS_FILE} is truncated or corrupt (its sha256 is not the one {CARD_FILE} recorded)", hint=hint)
    weights = _read_safetensors(folder / WEIGHTS_FILE, hint)
    try:
        state = json.loads((folder / TRAIN_STATE_FILE).read_text())
        meta = state.pop("optimizer")
    except (json.JSONDecodeError, KeyError, AttributeError) as exc:
        raise ElunetError(f"{folder / TRAIN_STATE_FILE} is truncated or corrupt ({type(exc).__name__}: {exc})", hint=hint) from None
    return weights, state, _join_optimizer_state(_read_safetensors(folder / OPTIMIZER_FILE, hint), meta)
